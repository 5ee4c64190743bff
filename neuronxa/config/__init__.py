"""The configuration layer: the schema of every config group (``schema``), the rules that types cannot say
(``rules``), the checks that need the world (``world``) and the command line's composition of every job
(``jobs``). Nothing here imports torch, transformers or the tasks before the options are valid."""
