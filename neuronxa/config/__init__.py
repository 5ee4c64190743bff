"""The configuration layer: the schema of every config group (``schema``), each option's rule (``rules``) and
the rules between options (``combinations``), checked in one step after composition (``validation``), the checks
that need the world (``world``), and the command line's composition of every job of a run (``jobs``). Nothing
here imports torch, transformers or the tasks before the options are valid."""
