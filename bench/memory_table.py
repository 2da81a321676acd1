"""Training memory per stage and device for the full-size model (LLaVA-1.5-7B + CAV-MAE scale++, bf16, the paper's
batches over its 4 GPUs): the README's table. Activations are measured on CPU at the real widths (dali_hf.memory)."""

from dali_hf.memory import memory_table


def main():
    print(memory_table())


if __name__ == "__main__":
    main()
