// Train: LoRA training on top of the memory-mapped quantized base model, on the CPU.
//
// The base weights stay frozen in their GGUF form; only the adapter's lora_A / lora_B are trained, in f32
// (the QLoRA recipe, Dettmers et al. 2023, arXiv:2305.14314, without the GPU). Each op's forward and backward
// sit side by side, as in llm.c (train_gpt2.c), and every backward is checked by central differences and
// against PyTorch + PEFT (../shared/reference/.../train/).
//
// Dimension glossary used throughout this target:
//   T  tokens of a packed batch (rows of several sequences, causal within each)
//   D  n_embd            H  n_head            Hkv  n_head_kv        Dh  head_dim
//   F  n_ff              V  n_vocab           r    LoRA rank
// Matrices are row-major; a weight W is [n_out, n_in] and a projection computes y[T, n_out] = x[T, n_in]·Wᵀ.
//
// Model side (Model/): `TrainingSequence` (input_ids + labels_mask) and `PreferencePair` are the inputs;
// `LoRATrainer` computes SFT / DPO losses and gradients in `LoRAParameters` layout (`sftLossAndGradient`,
// `dpoLossAndGradient`, `evalLoss`, `logProbs`) on its own thread pool; Ops.swift holds each op's forward and
// backward; `TrainBench.run` measures training tokens/s.
import Runtime
