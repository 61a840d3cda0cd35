"""lm-convert: HF checkpoints (GPT-2, Llama; safetensors) <-> lm model dirs; GGUF (Llama) -> lm.

  lm-convert import-hf --hf_dir DIR --model_dir OUT [--scan_layers] [--dtype D] [--overwrite]
      [--vocab_pad_multiple N]
  lm-convert export-hf --model_dir M --hf_dir OUT [--step N] [--overwrite]
  lm-convert import-gguf --gguf FILE --model_dir OUT [--scan_layers] [--dtype D] [--overwrite]
      [--vocab_pad_multiple N]
  lm-convert merge-lora --model_dir LORA_RUN --out_dir OUT [--step N] [--overwrite]

Fine-tune an imported model with lm-train ... --gin.train.init_from="'OUT'".
"""
import argparse
import sys

from lm.cli.common import run_main


_PAD_HELP = ("pad the embedding rows to a multiple of this (e.g. 128), so that a vocabulary "
             "like 50,257 divides the tensor axis of a mesh")


def _import_options(parser):
  """The options import-hf and import-gguf share: where to write and how to store the model."""
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--scan_layers", action="store_true", help="stack layers for nn.scan")
  parser.add_argument("--dtype", default="float32", help="compute dtype of the model")
  parser.add_argument("--param_dtype", default="float32", help="dtype the weights are stored in")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --model_dir")
  parser.add_argument("--vocab_pad_multiple", type=int, default=1, help=_PAD_HELP)


def _main(argv):
  parser = argparse.ArgumentParser(prog="lm-convert", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  imp = commands.add_parser("import-hf", help="HF checkpoint dir -> lm model dir")
  imp.add_argument("--hf_dir", required=True, help="config.json + *.safetensors (or an index)")
  _import_options(imp)
  exp = commands.add_parser("export-hf", help="lm model dir -> HF checkpoint dir")
  exp.add_argument("--model_dir", required=True)
  exp.add_argument("--hf_dir", required=True)
  exp.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --hf_dir")
  gg = commands.add_parser("import-gguf", help="GGUF file (Llama family) -> lm model dir")
  gg.add_argument("--gguf", required=True, help="a llama.cpp .gguf file")
  _import_options(gg)
  mrg = commands.add_parser("merge-lora", help="LoRA run -> lm model dir of merged weights")
  mrg.add_argument("--model_dir", required=True, help="a LoRA run (lm-train with lora.gin)")
  mrg.add_argument("--out_dir", required=True)
  mrg.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  mrg.add_argument("--overwrite", action="store_true", help="replace a non-empty --out_dir")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  from lm.convert import hf_dirs  # after parsing: --help stays fast
  if args.command == "import-hf":
    cfg = hf_dirs.import_hf(args.hf_dir, args.model_dir, args.overwrite,
                            scan_layers=args.scan_layers, dtype=args.dtype,
                            param_dtype=args.param_dtype,
                            vocab_pad_multiple=args.vocab_pad_multiple)
    print(f"imported {args.hf_dir} -> {args.model_dir} ({cfg.num_layers} layers, "
          f"d_model {cfg.d_model}, vocab {cfg.vocab_size})")
  elif args.command == "import-gguf":
    from lm.convert import gguf_import
    cfg = gguf_import.import_gguf(args.gguf, args.model_dir, args.overwrite,
                                  scan_layers=args.scan_layers, dtype=args.dtype,
                                  param_dtype=args.param_dtype,
                                  vocab_pad_multiple=args.vocab_pad_multiple)
    print(f"imported {args.gguf} -> {args.model_dir} ({cfg.num_layers} layers, "
          f"d_model {cfg.d_model}, vocab {cfg.vocab_size})")
  elif args.command == "merge-lora":
    from lm.finetuning.merge import merge_lora
    merge_lora(args.model_dir, args.out_dir, args.step, args.overwrite)
    print(f"merged {args.model_dir} -> {args.out_dir}")
  else:
    hf_dirs.export_hf(args.model_dir, args.hf_dir, args.step, args.overwrite)
    print(f"exported {args.model_dir} -> {args.hf_dir}")


def main(argv=None):
  raise SystemExit(run_main(_main, argv))


if __name__ == "__main__":
  main()
