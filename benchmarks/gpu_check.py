"""The one prepared check of fm_mnist's CUDA path; `benchmarks/gpu_check.sh` runs it. Every check runs even if an earlier
one failed, and the run ends with a table of what passed and the figures. Bulk output (checkpoints, samples) goes to a
temporary folder; only the summary log, the JSON figures and two sample grids are written to --out (at most 8 files).

    python3 benchmarks/gpu_check.py --out OUT            # on a CUDA GPU: the default (gpu) recipe, a few hundred steps
    python3 benchmarks/gpu_check.py --out OUT --dry-run  # the same checks on the CPU, tiny sizes, a few minutes

Checks: the real `train()` loop with `torch.cuda.set_sync_debug_mode('warn')` counting host-device syncs; images/s from
the loop with channels-last on and off, cuDNN autotuning on and off, eager and compiled, and with Muon; float16 with the
gradient scaler (forced), saved and resumed; a CPU checkpoint resumed on CUDA, with AdamW and with Muon; a compiled
resume; a one-process NCCL group through the DistributedDataParallel code path; `python -m fm_mnist evaluate` on CUDA;
generation streamed to disk; a short MeanFlow fine-tune (a Jacobian-vector product through the network) and its
one-step samples.
"""
import argparse, contextlib, io, json, os, shutil, sys, tempfile, time, traceback, warnings
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository's fm_mnist, where nothing is installed
from fm_mnist.checkpoint import load_flow, read_checkpoint, save_checkpoint
from fm_mnist.config import ModelConfig, PRESETS, TrainConfig
from fm_mnist.data import load_mnist_tensors
from fm_mnist.performance import amp_settings, configure_backends, tune_cpu_allocator
from fm_mnist.training import new_train_state, resume_train_state, train
from fm_mnist.utils import visualize_samples


class Check:
    "Runs named checks, records pass/fail, figures and the first line of any error."
    def __init__(self, log):
        self.rows, self.figures, self.log = [], {}, log

    def __call__(self, name):
        check = self
        class Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter(); check.say(f'== {name}'); return self
            def __exit__(self, typ, err, tb):
                secs = time.perf_counter() - self.t0
                if err is None: check.rows.append((name, 'pass', f'{secs:.1f} s'))
                else:
                    check.rows.append((name, 'FAIL', f'{typ.__name__}: {str(err).splitlines()[0][:150] if str(err) else ""}'))
                    check.say(''.join(traceback.format_exception(typ, err, tb))[-3000:])
                return True   # the next check runs anyway
        return Ctx()

    def say(self, *a):
        msg = ' '.join(map(str, a))
        print(msg, flush=True)
        self.log.write(msg + '\n'); self.log.flush()


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def loop_speed(mc, tc, images, labels, device, steps, warmup):
    "Images/s of `train()` itself over `steps` steps after `warmup` untimed ones (compilation, autotuning)."
    state = new_train_state(mc, replace(tc, max_steps=warmup + steps, minutes=None), len(images), device)
    marks = {}
    def mark(st): sync(device); marks['t0'] = time.perf_counter()
    train(state, images, labels, every_steps=(warmup, mark), progress=False)
    sync(device)
    return steps * tc.batch_size / (time.perf_counter() - marks['t0']), state


def run(cmd, check):
    "Run a command line (the scripts, as a user would), logging its output; raises if it fails."
    import subprocess
    p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    check.say(p.stdout[-2000:].rstrip())
    if p.returncode: raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f'exit {p.returncode}')
    return p.stdout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='the few files that come back: summary log, JSON, two grids')
    p.add_argument('--data_dir', help='MNIST root (default: $FM_MNIST_DATA, else data/)')
    p.add_argument('--dry-run', dest='dry_run', action='store_true', help='the same checks on the CPU with tiny sizes')
    p.add_argument('--steps', type=int, help='steps of the main training check (default: 300, dry run 8)')
    args = p.parse_args(argv)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    bulk = Path(tempfile.mkdtemp(prefix='fm_mnist_gpu_check_'))
    log = open(out / 'gpu_check.log', 'w')
    check = Check(log)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        check.say('no CUDA device: run with --dry-run for the CPU rehearsal'); return 2
    tune_cpu_allocator()
    device = torch.device('cpu' if dry else 'cuda')
    configure_backends(device)
    steps = args.steps or (8 if dry else 300)
    mc, tc = PRESETS['gpu']
    if dry: mc, tc = replace(mc, base_channels=8, time_emb_dim=16), replace(tc, batch_size=32)
    tc = replace(tc, log_every=25 if not dry else 4)
    gridn, evaln, genn = (16, 200, 300) if dry else (64, 2000, 10000)
    data = args.data_dir or os.environ.get('FM_MNIST_DATA')
    images, labels = load_mnist_tensors(data, train=True)
    amp, amp_dtype = amp_settings(device)
    if dry:   # the rehearsal checks the code paths, not the compiler: Dynamo's tracing without Inductor's slow C++ build
        real_compile = torch.compile
        torch.compile = lambda model, **kw: real_compile(model, backend='eager')
    env = {'torch': torch.__version__, 'device': torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu (dry run)',
           'autocast': str(amp_dtype) if amp else 'off', 'dry_run': dry, 'steps': steps}
    check.say(json.dumps(env))
    figs = check.figures
    ckpt_gpu = bulk / 'main' / 'checkpoint.pt'

    with check(f'train() loop, {steps} steps, sync debug warnings'):
        state = new_train_state(mc, replace(tc, epochs=1, max_steps_per_epoch=steps), len(images), device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            if device.type == 'cuda': torch.cuda.set_sync_debug_mode('warn')
            try:
                t0 = time.perf_counter(); train(state, images, progress=False); sync(device)
                secs = time.perf_counter() - t0
            finally:
                if device.type == 'cuda': torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if 'synchroniz' in str(w.message).lower()]
        figs['main_loop_images_per_s_incl_warmup'] = steps * tc.batch_size / secs
        figs['host_device_syncs'] = len(syncs)
        figs['syncs_allowed'] = 2 * (-(-steps // tc.log_every))   # the loss read back every log_every steps (a copy and a check)
        check.say(f'{len(syncs)} synchronizing calls in {steps} steps; first: {str(syncs[0].message)[:200] if syncs else "-"}')
        for w in syncs[:5]: check.say('  sync at', f'{w.filename}:{w.lineno}')
        save_checkpoint(state.checkpoint(), ckpt_gpu)
        assert np.isfinite(state.losses).all() and len(syncs) <= figs['syncs_allowed'], f'{len(syncs)} syncs'

    speed_steps, speed_warmup = (4, 2) if dry else (100, 20)
    for name, kw in [('channels_last on, cudnn.benchmark on', dict(channels_last=True, bench=True)),
                     ('channels_last off, cudnn.benchmark on', dict(channels_last=False, bench=True)),
                     ('channels_last on, cudnn.benchmark off', dict(channels_last=True, bench=False)),
                     ('channels_last off, cudnn.benchmark off', dict(channels_last=False, bench=False)),
                     ('compiled (torch.compile), channels_last on', dict(channels_last=True, bench=True, compile=True)),
                     ('Muon (the cpu recipe\'s optimiser), channels_last on', dict(channels_last=True, bench=True, optimizer='muon'))]:
        with check(f'speed: {name}'):
            if device.type == 'cuda': torch.backends.cudnn.benchmark = kw['bench']
            ips, st = loop_speed(mc, replace(tc, channels_last=kw['channels_last'], compile=kw.get('compile', False),
                                             optimizer=kw.get('optimizer', tc.optimizer)), images, None,
                                 device, speed_steps, speed_warmup if not kw.get('compile') else speed_warmup + (0 if dry else 10))
            figs[f'images_per_s: {name}'] = ips
            check.say(f'{ips:.0f} images/s')
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True

    short = replace(tc, epochs=1, max_steps=None, max_steps_per_epoch=20 if not dry else 3)   # epochs of a few steps, to resume
    def one_epoch_then_resume(where, cfg=short, **speed):
        "Train one short epoch of `cfg` on `where`, save, resume on the device for a second epoch (with `speed` switches)."
        st = new_train_state(mc, cfg, len(images), where)
        train(st, images, progress=False)
        ck = read_checkpoint(save_checkpoint(st.checkpoint(), bulk / 'resume' / 'checkpoint.pt'), for_resume=True)
        resumed = resume_train_state(ck, len(images), device, epochs=2, **speed)
        train(resumed, images, progress=False)
        assert resumed.step == 2 * cfg.max_steps_per_epoch and np.isfinite(resumed.losses).all(), resumed.step
        return st, resumed

    with check('float16 with the gradient scaler (forced), save and resume'):
        with mock.patch('fm_mnist.training.amp_settings', lambda d: (True, torch.float16)):
            st, st2 = one_epoch_then_resume(device)
            assert st.scaler.is_enabled() and st.checkpoint()['scaler_state'], 'the scaler state was not saved'
            figs['float16_scale'] = float(st2.scaler.get_scale())
            # a checkpoint with an empty scaler state (bfloat16 or CPU) resumed into float16
            ck = read_checkpoint(ckpt_gpu, for_resume=True)
            ck['scaler_state'] = {}
            ck['_train_config'] = replace(ck['_train_config'], max_steps_per_epoch=2)
            ck['steps_per_epoch'] = 2
            train(resume_train_state(ck, len(images), device, epochs=ck['epoch'] + 1), images, progress=False)

    with check('a CPU checkpoint resumed on CUDA (channels-last, fused AdamW)' if not dry else 'a checkpoint resumed into channels-last'):
        one_epoch_then_resume('cpu', channels_last=True)

    with check("Muon (the cpu recipe's optimiser): a CPU checkpoint resumed on the device, channels-last"):
        one_epoch_then_resume('cpu', cfg=replace(short, optimizer='muon'), channels_last=True)

    with check('a compiled resume'):
        one_epoch_then_resume(device, compile=True)

    with check('a one-process NCCL group through the DistributedDataParallel path' if not dry else 'a one-process gloo group, DDP path'):
        import torch.distributed as dist
        port = 29500 + os.getpid() % 1000
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', init_method=f'tcp://127.0.0.1:{port}',
                                rank=0, world_size=1, **({'device_id': device} if device.type == 'cuda' else {}))
        try:
            st = new_train_state(mc, replace(tc, max_steps=10 if not dry else 3), len(images), device)
            seen = []
            train(st, images, every_steps=(2, lambda s: seen.append(s.step)), progress=False)
            from fm_mnist.training import _training_flow
            assert type(_training_flow(st).model).__name__ == 'DistributedDataParallel' and seen
        finally: dist.destroy_process_group()

    with check(f'python -m fm_mnist evaluate on {device.type}, N = {evaln}'):
        res = bulk / 'eval.json'
        run(['-m', 'fm_mnist', 'evaluate', '--checkpoint', str(ckpt_gpu), '--num_samples', str(evaln), '--num_steps', '4',
             '--solver', 'midpoint', '--device', device.type, '--json', str(res), *(['--data_dir', data] if data else [])], check)
        r = json.loads(res.read_text())
        figs['evaluate_sampling_seconds'] = r['sampling_seconds']; figs['evaluate_fid_after_short_run'] = r['fid']

    with check(f'generation streamed to disk, {genn} samples in batches'):
        gen = bulk / 'generated'
        t0 = time.perf_counter()
        run(['-m', 'fm_mnist', 'generate', '--checkpoint', str(ckpt_gpu), '--num_samples', str(genn), '--batch_size', str(genn // 10),
             '--num_steps', '100' if not dry else '2', '--save_numpy', '--seed', '0', '--device', device.type, '--output_dir', str(gen)], check)
        figs['generate_seconds'] = time.perf_counter() - t0
        assert np.load(gen / 'generated_samples.npy', mmap_mode='r').shape == (genn, 1, 28, 28)
        shutil.copy(gen / 'generated_samples_grid.png', out / 'generated_grid.png')

    with check('a short MeanFlow fine-tune (JVP through the UNet) and one-step samples'):
        init = read_checkpoint(ckpt_gpu)
        fmc = replace(init['_model_config'], interval=True)
        model = fmc.build()
        model.load_state_dict(init['model_state'], strict=False)
        st = new_train_state(fmc, replace(tc, objective='meanflow', max_steps=30 if not dry else 3, lr=1e-4), len(images), device,
                             model=model)
        t0 = time.perf_counter(); train(st, images, progress=False); sync(device)
        figs['meanflow_images_per_s'] = st.step * tc.batch_size / (time.perf_counter() - t0)
        x, nfe = st.ema_flow().sample(num_samples=gridn, num_steps=1, seed=0, return_nfe=True)
        assert nfe == 1 and torch.isfinite(x).all()
        visualize_samples(x, save_path=out / 'meanflow_one_step_grid.png', show=False)

    ok = sum(r[1] == 'pass' for r in check.rows)
    check.say('\n| check | result | detail |\n| --- | --- | --- |')
    for name, status, detail in check.rows: check.say(f'| {name} | {status} | {detail} |')
    check.say('\n| figure | value |\n| --- | --- |')
    for k, v in figs.items(): check.say(f'| {k} | {v:.1f} |' if isinstance(v, float) else f'| {k} | {v} |')
    check.say(f'\n{ok} of {len(check.rows)} checks passed')
    (out / 'gpu_check.json').write_text(json.dumps({'environment': env, 'checks': check.rows, 'figures': figs}, indent=2))
    shutil.rmtree(bulk, ignore_errors=True)
    return 0 if ok == len(check.rows) else 1


if __name__ == '__main__':
    sys.exit(main())
