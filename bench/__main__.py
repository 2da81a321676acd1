"""`make bench`: run every benchmark in this folder."""

from . import model_overhead, objectives

if __name__ == "__main__":
    model_overhead.main()
    print()
    objectives.main()
