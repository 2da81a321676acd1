"""`make bench`: run every benchmark in this folder."""

from . import batch_jobs, memory_table, model_overhead, objectives, pipeline_throughput

if __name__ == "__main__":
    model_overhead.main()
    print()
    pipeline_throughput.main()
    print()
    batch_jobs.main()
    print()
    objectives.main()
    print()
    memory_table.main()
