"""Table 3: Pearson correlation of MEXA / NASCA / NAVCA with cross-lingual transfer, per model and pooling.

`make reproduce-table3` runs the sweep (conf/experiment/table3.yaml) and prints this table beside the paper's.
"""

from experiments.common import print_correlation_tables

if __name__ == "__main__":
    print_correlation_tables(__doc__, "table3", "table3.csv")
