"""Training memory per stage and device for the full-size model (LLaVA-1.5-7B + CAV-MAE scale++, bf16, the paper's
batches over its 4 GPUs): the README's tables, memory per stage and the largest batch per device that each card size
fits. Activations are measured on CPU at the real widths (bench/memory.py)."""

from bench.memory import card_fit_table, memory_rows, memory_table


def main():
    rows = memory_rows()
    print(memory_table(rows=rows))
    print()
    print(card_fit_table(rows))


if __name__ == "__main__":
    main()
