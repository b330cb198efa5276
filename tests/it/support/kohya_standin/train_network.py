"""STAND-IN for kohya-ss sd-scripts `train_network.py` (3e6935a), for plasma's tests.

It trains nothing. It honours the contract in
shared/contracts/kohya-train-network.md as observed on 3e6935a:
arguments, the dataset TOML (first non-null wins, images globbed directly in
image_dir, reg images balanced round-robin against the train samples), the
step arithmetic and the stdout block, checkpoint names and `saving
checkpoint:` lines, and the log quirks: rich-wrapped stderr log lines at 80
columns, a tqdm bar on stderr drawn twice per step with `\r` (the first draw
without `avr_loss`), `model saved.` glued to the last bar. It imports
`--network_module` (so a missing package fails with `No module named`), needs
a tokenizer cache when HF_HUB_OFFLINE=1, and fails fp16 on the CPU on the
first step as accelerate 0.33 does.

Saved state and resume as 3e6935a does them (contract §5, train_network.py):
`--save_state` writes `{name}-step{N:08d}-state/` at each step save (and
`{name}-state/` at the end) with `train_state.json` = `{"current_epoch": E,
"current_step": S}` first and `random_states_0.pkl` last; `--resume DIR`
reads S (an `--initial_step`/`--initial_epoch` overrides it) and asserts
`max_train_steps > S`. Without `--skip_until_initial_step` the step count
restarts at 0 from epoch S // batches; with it, S batches are skipped and the
step count goes on from what is left of S after whole epochs (right only in
the first epoch). The bar's total is `max_train_steps` minus that count.

Test knobs (environment): STANDIN_STEP_SECONDS (default 0.01),
STANDIN_LOSS_MIN_AT (the step with the lowest loss; default half the run),
STANDIN_SIGKILL_AT_STEP (kill itself with SIGKILL there, as the kernel's OOM
killer would), STANDIN_NAN_AT_STEP (the loss is NaN from there on), STANDIN_PID_FILE (write the trainer's and its loader
worker's pids there).
"""

import argparse
import glob
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib

IMAGE_EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".bmp"]


def log(message):
    # rich wraps log lines at 80 columns when stderr is not a terminal,
    # splitting words (paths) anywhere.
    line = "INFO     " + message
    for i in range(0, len(line), 80):
        sys.stderr.write(line[i : i + 80] + "\n")
    sys.stderr.flush()


def parse():
    p = argparse.ArgumentParser()
    for name in [
        "pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name",
        "save_model_as", "network_module", "optimizer_type", "lr_scheduler",
        "mixed_precision", "save_precision", "tokenizer_cache_dir", "resume",
    ]:
        p.add_argument("--" + name, type=str, default=None)
    for name in [
        "save_every_n_steps", "save_every_n_epochs", "max_train_epochs", "network_dim",
        "clip_skip", "seed", "max_data_loader_n_workers", "gradient_accumulation_steps",
        "lr_warmup_steps", "initial_step", "initial_epoch",
    ]:
        p.add_argument("--" + name, type=int, default=None)
    p.add_argument("--max_train_steps", type=int, default=1600)
    for name in ["network_alpha", "learning_rate", "unet_lr", "text_encoder_lr", "prior_loss_weight"]:
        p.add_argument("--" + name, type=float, default=None)
    for name in [
        "no_half_vae", "gradient_checkpointing", "cache_latents", "save_state",
        "network_train_unet_only", "skip_until_initial_step", "save_state_on_train_end",
    ]:
        p.add_argument("--" + name, action="store_true")
    return p.parse_args()


def first(*values):
    for v in values:
        if v is not None:
            return v
    return None


def load_dataset(path):
    with open(path, "rb") as f:
        config = tomllib.load(f)
    general = config.get("general", {})
    blocks = []
    for d in config.get("datasets", []):
        batch = first(d.get("batch_size"), general.get("batch_size"), 1)
        train, reg = [], []
        seen = set()
        for s in d.get("subsets", []):
            if s["image_dir"] in seen:
                continue
            seen.add(s["image_dir"])
            repeats = first(s.get("num_repeats"), d.get("num_repeats"), general.get("num_repeats"), 1)
            images = sorted(
                f for f in glob.glob(os.path.join(s["image_dir"], "*"))
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            )
            (reg if s.get("is_reg") else train).append((images, repeats))
        blocks.append((train, reg, batch))
    return blocks


def count_steps(blocks, args):
    t_total, r_total, batches = 0, 0, 0
    for train, reg, batch in blocks:
        t = sum(len(images) * repeats for images, repeats in train)
        infos = [repeats for images, repeats in reg for _ in images]
        n = 0
        if infos:
            first_loop = True
            while n < t:
                for repeats in infos:
                    n += repeats if first_loop else 1
                    if n >= t:
                        break
                first_loop = False
        t_total += t
        r_total += sum(len(images) * repeats for images, repeats in reg)
        batches += math.ceil((t + n) / batch)
    steps = args.max_train_steps
    if args.max_train_epochs is not None:
        steps = args.max_train_epochs * math.ceil(batches / (args.gradient_accumulation_steps or 1))
        log(f"override steps. steps for {args.max_train_epochs} epochs is / 指定エポックまでのステップ数: {steps}")
    return t_total, r_total, batches, steps


def write_model(path, step):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = json.dumps({"__metadata__": {"ss_steps": str(step), "standin": "true"}}).encode()
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + step.to_bytes(8, "little"))


def save_state(directory, epoch, step):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "train_state.json"), "w") as f:
        json.dump({"current_epoch": epoch, "current_step": step}, f)
    for name in ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"]:
        with open(os.path.join(directory, name), "w") as f:
            f.write(f"state at step {step}")


def main():
    args = parse()
    log("prepare tokenizer")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not args.tokenizer_cache_dir:
        raise OSError(
            "Can't load tokenizer for 'openai/clip-vit-large-patch14'. If you were trying to load it "
            "from 'https://huggingface.co/models', make sure you don't have a local directory with the same name."
        )
    blocks = load_dataset(args.dataset_config)
    t_total, r_total, batches, steps = count_steps(blocks, args)
    print(f"{t_total} train images with repeats.", flush=True)
    print(f"{r_total} reg images with repeats.", flush=True)
    log(f"loading model from {args.pretrained_model_name_or_path} (a long line so that rich wraps it mid-word)")
    if not os.path.exists(args.pretrained_model_name_or_path):
        raise FileNotFoundError(args.pretrained_model_name_or_path)
    log("preparing accelerator")
    print("accelerator device: cpu", flush=True)
    importlib.import_module(args.network_module or "networks.lora")

    pid_file = os.environ.get("STANDIN_PID_FILE")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(f"{os.getpid()} {worker.pid}\n")

    epochs = math.ceil(steps / batches) if batches else 0
    print("running training / 学習開始", flush=True)
    print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {t_total}")
    print("  num validation images * repeats / 学習画像の数×繰り返し回数: 0")
    print(f"  num reg images / 正則化画像の数: {r_total}")
    print(f"  num batches per epoch / 1epochのバッチ数: {batches}")
    print(f"  num epochs / epoch数: {epochs}")
    print(f"  batch size per device / バッチサイズ: {blocks[0][2] if blocks else 1}")
    print(f"  gradient accumulation steps / 勾配を合計するステップ数 = {args.gradient_accumulation_steps or 1}")
    print(f"  total optimization steps / 学習ステップ数: {steps}", flush=True)

    steps_from_state = None
    if args.resume:
        log(f"resume training from local state: {args.resume}")
        if not os.path.exists(os.path.join(args.resume, "random_states_0.pkl")):
            raise FileNotFoundError(os.path.join(args.resume, "random_states_0.pkl"))
        with open(os.path.join(args.resume, "train_state.json")) as f:
            data = json.load(f)
        steps_from_state = data["current_step"]
        log(f"load train state from {args.resume}/train_state.json: {data}")
    accumulation = args.gradient_accumulation_steps or 1
    steps_per_epoch = math.ceil(batches / accumulation)
    initial_step = 0
    if args.initial_epoch is not None or args.initial_step is not None:
        if args.initial_step is not None:
            initial_step = args.initial_step
        else:
            initial_step = (args.initial_epoch - 1) * steps_per_epoch
    elif steps_from_state is not None:
        initial_step = steps_from_state
    if initial_step > 0:
        assert steps > initial_step, (
            f"max_train_steps should be greater than initial step / max_train_stepsは初期ステップより大きい必要があります: {steps} vs {initial_step}"
        )
    epoch_to_start = 0
    if initial_step > 0:
        if args.skip_until_initial_step:
            log(f"skipping {initial_step} steps / {initial_step}ステップをスキップします")
            initial_step *= accumulation
            epoch_to_start = initial_step // steps_per_epoch
        else:
            epoch_to_start = initial_step // steps_per_epoch
            initial_step = 0
    global_step = 0
    if initial_step > 0:
        for _ in range(epoch_to_start):
            initial_step -= batches
        global_step = initial_step
    bar_total = steps - initial_step

    delay = float(os.environ.get("STANDIN_STEP_SECONDS", "0.01"))
    min_at = int(os.environ.get("STANDIN_LOSS_MIN_AT", str(max(steps // 2, 1))))
    kill_at = int(os.environ.get("STANDIN_SIGKILL_AT_STEP", "0"))
    nan_at = int(os.environ.get("STANDIN_NAN_AT_STEP", "0"))
    name = args.output_name or "last"
    start = time.time()
    step = global_step
    done = 0
    for epoch in range(epoch_to_start, epochs):
        print(f"\nepoch {epoch + 1}/{epochs}\n", flush=True)
        for _ in range(batches):
            if step >= steps:
                break
            if initial_step > 0:
                initial_step -= 1
                continue
            step += 1
            done += 1
            time.sleep(delay)
            if args.mixed_precision == "fp16":
                raise RuntimeError("expected m1 and m2 to have the same dtype, but got: c10::Half != float")
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            loss = 0.1 + 0.01 * abs(step - min_at) / 10
            if nan_at and step >= nan_at:
                loss = float("nan")
            elapsed = time.time() - start
            pct = int(100 * done / bar_total)
            bar = f"steps: {pct:3d}%|#| {done}/{bar_total} [{elapsed:05.2f}<00:00, {delay:.2f}s/it"
            sys.stderr.write("\r" + bar + "]")
            sys.stderr.write("\r" + bar + f", avr_loss={loss:.3g}]")
            sys.stderr.flush()
            if args.save_every_n_steps and step % args.save_every_n_steps == 0:
                path = os.path.join(args.output_dir, f"{name}-step{step:08d}.safetensors")
                print(f"\nsaving checkpoint: {path}", flush=True)
                write_model(path, step)
                if args.save_state:
                    save_state(os.path.join(args.output_dir, f"{name}-step{step:08d}-state"), epoch + 1, step)
    if args.save_state or args.save_state_on_train_end:
        save_state(os.path.join(args.output_dir, f"{name}-state"), epochs, step)
    path = os.path.join(args.output_dir, f"{name}.safetensors")
    print(f"\nsaving checkpoint: {path}", flush=True)
    write_model(path, step)
    sys.stderr.write("model saved.\n")
    sys.stderr.flush()
    worker.terminate()


if __name__ == "__main__":
    main()
