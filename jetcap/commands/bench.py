"""``jetcap bench``: a bundle's runtimes against PyTorch eager, with the distance to the limit (Python 3.6)."""
import click

from jetcap.commands.options import checkpoint_options, echo_json, json_option, log, model_source_options
from jetcap.runtime.manifest import PRECISIONS


@click.command("bench")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="The bundle's PyTorch checkpoint, to compare with PyTorch eager (needs torch).")
@click.option("--repeat", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed repetitions of every measurement (decoder steps: 4x, at least 100).")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed repetitions before each measurement.")
@click.option("--cold-runs", type=click.IntRange(min=0), default=3, show_default=True,
              help="Fresh processes per configuration and round for the cold start and peak RSS (median; 0 skips).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Passes over all configurations; each timing is the best round's median (for busy machines).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads of ONNX Runtime, PyTorch and the BLAS [default: the usable CPUs].")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(PRECISIONS),
              help="Bundle variants to run (repeatable) [default: all in the bundle].")
@click.option("--only", "only", multiple=True,
              help="Run only this configuration (repeatable): pytorch, pytorch-reproject, onnxruntime-fp32, ...")
@click.option("--matmul-size", type=click.IntRange(min=16), default=1024, show_default=True,
              help="Side of the square GEMM that measures the machine's peak matmul rate.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Folder of real images (captioner) or .npy/.json sequences (classifier) to feed, e.g. real-size "
                   "photos for a 224x224 model [default: the shipped 96x96 samples, resized].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where PyTorch eager and ONNX Runtime run: the CPU (ONNX Runtime's CPU provider only, even with "
                   "onnxruntime-gpu), or a CUDA GPU (torch.cuda; onnxruntime-gpu's CUDA provider). TensorRT runs "
                   "on the GPU either way.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also draw latency, memory and cold-start bars per configuration into this PNG.")
@model_source_options
@click.option("--word-map", type=click.Path(dir_okay=False), default=None,
              help="With --checkpoint: the captioner's word map, if the checkpoint lacks it [default: the bundle's].")
@json_option
def command(bundle, checkpoint, repeat, warmup, cold_runs, rounds, threads, precisions, only, matmul_size, data, device,
            plot, models, model_args, adapter, trust_pickle, code_path, word_map, as_json):
    """Benchmark BUNDLE: PyTorch eager (from --checkpoint) against ONNX Runtime (FP32/FP16/INT8) and
    TensorRT (when installed), one fresh process per configuration.

    Per configuration: encoder, decoder-step and per-caption latency (p50/p95) and captions/s at batch 1
    and at the bundle's largest batch (classifier: latency at several T); peak RSS and cold start of a
    fresh process; each next to its ratio against PyTorch eager.  The graphs' FLOPs and the machine's
    measured matmul rate give the distance to the limit.  Results on stdout (a table, or --json),
    progress on stderr.  Without torch installed the PyTorch configurations are skipped with a note.
    A bundle exported from your own code is timed in PyTorch as that code runs: give the export's
    --model / --model-args / --adapter / --trust-pickle / --code-path with --checkpoint.
    Exit 1 when a configuration failed.
    """
    from jetcap.bench.report import format_report
    from jetcap.bench.runs import BenchOptions, run_benchmark
    from jetcap.util.fsio import check_output_file

    if plot:
        check_output_file(plot, "--plot", keep_out_of=[bundle], suffixes=(".png",))

    options = BenchOptions(bundle, checkpoint=checkpoint, repeat=repeat, warmup=warmup, cold_runs=cold_runs,
                           rounds=rounds, threads=threads, precisions=precisions, only=only, matmul_size=matmul_size,
                           data=data, device=device, checkpoint_options=checkpoint_options(
                               checkpoint, models, model_args, adapter, trust_pickle, code_path, word_map))
    report = run_benchmark(options, log=log)
    if plot:
        from jetcap.bench.plot import draw_report

        log("plot: " + draw_report(report, plot))
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report))
    failed = [entry["name"] for entry in report["configurations"] if "error" in entry]
    if failed:
        log("FAILED: {}".format(", ".join(failed)))
        raise click.exceptions.Exit(1)
