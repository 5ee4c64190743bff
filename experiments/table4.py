"""Table 4: Pearson correlation of MEXA / NASCA / NAVCA with multilingual benchmarks, per model and pooling.

`make reproduce-table4` runs the sweep (conf/experiment/table4.yaml) and prints this table beside the paper's.
"""

from experiments.common import print_correlation_tables

if __name__ == "__main__":
    print_correlation_tables(__doc__, "table4", "table4.csv")
