"""Start a distributed MXNet job on this machine: scheduler, servers and workers on 127.0.0.1.

For a cluster, use MXNet's own launcher, which ships in the mxnet 1.9.1 wheel
(``python -m mxnet.tools.launch``, with the ``dmlc_tracker`` package: ssh, mpi, sge and yarn)
or set the ``DMLC_*`` variables yourself (SLURM, Kubernetes); see the distributed how-to. On
one machine that launcher cannot be kept on loopback (it looks up the host's address and binds
its ports on every interface), stops nothing when a process fails and has no timeout. This
module does the single-machine job with plain subprocesses, for tests and for trying a script
before moving it to a cluster:

- every process gets ``DMLC_PS_ROOT_URI=127.0.0.1``, a free ``DMLC_PS_ROOT_PORT``,
  ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``, its ``DMLC_ROLE`` and ``DMLC_NODE_HOST=127.0.0.1``
  (without it ps-lite binds to the first non-loopback interface);
- when any process exits non-zero the others would block forever inside ps-lite, so the rest are
  stopped ``grace`` seconds after the first failure, and everything is stopped at ``timeout``;
- only the processes started here are ever signalled, by PID.

Command line (its exit code: :func:`exit_status`)::

    python -m masked_opt.launch -n 2 -s 1 --timeout 300 -- python train.py --epochs 1
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ['Proc', 'launch', 'free_port', 'start_trainer_kvstore', 'exit_status', 'main']

#: Exit code of :func:`main` when the launcher stopped the job at its timeout (as ``timeout(1)``).
TIMEOUT_EXIT = 124

#: The default scheduler and server program: importing mxnet with DMLC_ROLE=scheduler/server
#: runs the ps-lite node loop inside ``import mxnet`` and exits when the job ends.
NODE_CMD = (sys.executable, '-c', 'import mxnet')


@dataclass
class Proc:
    """What one process of the job did.

    Attributes
    ----------
    role : str
        ``'scheduler'``, ``'server'`` or ``'worker'``.
    index : int
        Launch order within its role (not the ps-lite rank, which the scheduler assigns).
    returncode : int or None
        Exit code; negative for a signal (``-9`` when the launcher stopped it).
    output : str
        stdout and stderr, interleaved as written.
    stopped : str or None
        Why the launcher stopped it, or None when it exited by itself.
    """

    role: str
    index: int
    returncode: int
    output: str
    stopped: str = None

    @property
    def name(self):
        return '%s %d' % (self.role, self.index)


def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Examples
    --------
    >>> 1024 <= free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(worker_cmd, num_workers=2, num_servers=1, env=None, timeout=120.0, grace=5.0,
           server_cmd=NODE_CMD, server_env=None, cwd=None):
    """Run a dist kvstore job on 127.0.0.1 and return what every process did.

    Parameters
    ----------
    worker_cmd : sequence of str
        The training program, run once per worker (e.g. ``[sys.executable, 'train.py']``).
    num_workers, num_servers : int
        ``DMLC_NUM_WORKER`` and ``DMLC_NUM_SERVER``.
    env : dict, optional
        Extra environment for every process (e.g. ``MXNET_KVSTORE_BIGARRAY_BOUND``).
    timeout : float
        Seconds after which every process still running is killed.
    grace : float
        Seconds the others may still run after the first process that failed (or, once every
        worker has exited, for the scheduler and servers to shut down).
    server_cmd : sequence of str
        Program for the servers (default: ``python -c 'import mxnet'``).
    server_env : dict, optional
        Extra environment for the servers only.
    cwd : str, optional
        Working directory of every process.

    Returns
    -------
    list of Proc
        Scheduler first, then servers, then workers.

    Examples
    --------
    >>> import sys
    >>> from masked_opt.launch import launch
    >>> script = ("import mxnet as mx; kv = mx.kv.create('dist_sync'); "
    ...           "kv.init(3, mx.nd.ones((2,))); out = mx.nd.zeros((2,)); kv.push(3, out + 1); "
    ...           "kv.pull(3, out=out); print(kv.rank, out.asnumpy().tolist())")
    >>> procs = launch([sys.executable, '-c', script], num_workers=2, timeout=60)
    >>> [p.returncode for p in procs]
    [0, 0, 0, 0]
    >>> sorted(p.output.split()[-1] for p in procs if p.role == 'worker')  # summed pushes
    ['2.0]', '2.0]']
    """
    if num_workers < 1 or num_servers < 1:
        raise ValueError('a dist job needs at least one worker and one server; received '
                         'num_workers=%r, num_servers=%r' % (num_workers, num_servers))
    base = dict(os.environ)
    base.update(env or {})
    base.update({'DMLC_PS_ROOT_URI': '127.0.0.1', 'DMLC_PS_ROOT_PORT': str(free_port()),
                 'DMLC_NUM_SERVER': str(num_servers), 'DMLC_NUM_WORKER': str(num_workers),
                 'DMLC_NODE_HOST': '127.0.0.1'})
    plan = ([('scheduler', 0, NODE_CMD, {})]
            + [('server', i, server_cmd, server_env or {}) for i in range(num_servers)]
            + [('worker', i, worker_cmd, {}) for i in range(num_workers)])
    running = []
    try:
        for role, index, cmd, extra in plan:
            proc_env = dict(base, DMLC_ROLE=role, **extra)
            log = tempfile.TemporaryFile()
            popen = subprocess.Popen(list(cmd), env=proc_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
            running.append([role, index, popen, log, None])
        _supervise(running, timeout, grace)
    finally:
        for entry in running:
            if entry[2].poll() is None:  # only reached on an exception above
                entry[2].kill()
                entry[2].wait()
                entry[4] = entry[4] or 'launcher error'
    results = []
    for role, index, popen, log, stopped in running:
        log.seek(0)
        results.append(Proc(role, index, popen.returncode,
                            log.read().decode('utf-8', 'replace'), stopped))
        log.close()
    return results


def _supervise(running, timeout, grace):
    """Wait for the job; stop the rest after a failure, after the workers, or at the timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        codes = [entry[2].poll() for entry in running]
        if all(c is not None for c in codes):
            return
        now = time.monotonic()
        failed = any(c not in (None, 0) for c in codes)
        workers_done = all(c is not None for (role, *_), c in zip(running, codes, strict=True)
                           if role == 'worker')
        if now >= deadline:
            _stop(running, 'timeout after %.0f s' % timeout)
            return
        if failed or workers_done:
            # Give the others a moment to exit on their own (servers end after the workers;
            # a failed node leaves the others blocked in ps-lite), then stop them.
            deadline = min(deadline, now + grace)
            reason = 'still running %.0f s after %s' % (
                grace, 'a failure' if failed else 'the workers finished')
            while time.monotonic() < deadline:
                if all(entry[2].poll() is not None for entry in running):
                    return
                time.sleep(0.05)
            _stop(running, reason)
            return
        time.sleep(0.05)


def _stop(running, reason):
    for entry in running:
        popen = entry[2]
        if popen.poll() is None:
            popen.kill()  # SIGKILL to this PID only
            popen.wait()
            entry[4] = reason


def start_trainer_kvstore(trainer, batch_size=None):
    """Start a Gluon Trainer's kvstore and copy the parameters to it before the first step.

    Works around a race in MXNet 1.9.1's ``gluon.Trainer`` with a ``dist_sync`` kvstore and
    ``update_on_kvstore=False``: the Trainer sends the initial weights to the servers inside
    the first ``step()``, and pulls them back asynchronously while it already pushes the first
    gradients under the same keys. A server that has summed the gradients before the pull
    arrives returns the *gradient sum* as the worker's initial weights; training goes on and
    every process exits 0. It happens with any optimizer, masked or not. Calling this once,
    before the first ``backward``, makes the initial copy complete first.

    With ``update_on_kvstore=True`` on a dist kvstore, starting the kvstore sends the optimizer
    to the servers, with the ``rescale_grad`` it has then, and MXNet refuses any later change of
    it ("Possible change in the batch_size"). Pass the ``batch_size`` that your
    ``trainer.step(batch_size)`` calls will use, so that the servers get
    ``rescale_grad = 1 / batch_size`` now, exactly as the first ``step`` would have set it.
    Without ``batch_size`` the optimizer's ``rescale_grad`` is sent as it is, and only
    ``step(1)`` is accepted (right when the loss is already divided by the batch size, or when
    ``rescale_grad=1/batch_size`` was given in the optimizer's parameters). Passing
    ``batch_size`` is harmless with ``update_on_kvstore=False``, where every ``step`` sets
    ``rescale_grad`` again.

    Parameters
    ----------
    trainer : mxnet.gluon.Trainer
    batch_size : int, optional
        The ``batch_size`` of the ``trainer.step`` calls that follow.

    Examples
    --------
    >>> import mxnet as mx
    >>> from masked_opt.launch import start_trainer_kvstore
    >>> net = mx.gluon.nn.Dense(2, in_units=3)
    >>> net.initialize()
    >>> trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', kvstore='local')
    >>> start_trainer_kvstore(trainer, batch_size=8)   # harmless without a dist kvstore
    >>> trainer.optimizer.rescale_grad
    0.125
    """
    if batch_size is not None:
        if batch_size <= 0:
            raise ValueError('batch_size must be positive, received %r' % (batch_size,))
        # The very expression Trainer.step uses, so that its check finds the same float.
        trainer._optimizer.rescale_grad = trainer._scale / batch_size
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    import mxnet as mx
    mx.nd.waitall()  # the pulls of the initial weights have completed


def exit_status(procs):
    """The exit code of a job: the first failure among the processes the launcher did not stop.

    When one process fails, the launcher stops the others, which then exit ``-9``; that is a
    consequence, not the cause. So the code is that of the first process, in launch order
    (scheduler, servers, workers), that exited non-zero *by itself*: a worker's 3 stays 3 and a
    server's 86 (:data:`masked_opt.server.EXIT_CODE`) stays 86. A process ended by a signal it
    did not get from the launcher (a segfault) counts as ``128 + signal``, as in a shell. When
    no process failed by itself but the launcher stopped the job at its timeout, the code is
    ``124`` (as ``timeout(1)``); when every process that ended by itself exited 0 (servers
    stopped after the workers finished), it is 0.

    Parameters
    ----------
    procs : list of Proc
        What :func:`launch` returned.

    Returns
    -------
    int

    Examples
    --------
    >>> from masked_opt.launch import Proc, exit_status
    >>> exit_status([Proc('scheduler', 0, -9, '', 'still running 5 s after a failure'),
    ...              Proc('server', 0, -9, '', 'still running 5 s after a failure'),
    ...              Proc('worker', 0, 3, ''),
    ...              Proc('worker', 1, -9, '', 'still running 5 s after a failure')])
    3
    >>> exit_status([Proc('scheduler', 0, 0, ''), Proc('server', 0, -11, ''),
    ...              Proc('worker', 0, -9, '', 'still running 5 s after a failure')])
    139
    >>> exit_status([Proc('scheduler', 0, -9, '', 'timeout after 60 s'),
    ...              Proc('worker', 0, -9, '', 'timeout after 60 s')])
    124
    """
    for p in procs:
        if p.stopped is None and p.returncode:
            return p.returncode if p.returncode > 0 else 128 - p.returncode
    if any(p.stopped and p.stopped.startswith('timeout') for p in procs):
        return TIMEOUT_EXIT
    return 0


def main(argv=None):
    """Command line: ``python -m masked_opt.launch -n WORKERS -s SERVERS -- CMD ...``.

    Prints each process's output with a prefix and exits with :func:`exit_status`: the first
    failure among the processes the launcher did not stop.
    """
    parser = argparse.ArgumentParser(prog='python -m masked_opt.launch', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-n', '--num-workers', type=int, default=2)
    parser.add_argument('-s', '--num-servers', type=int, default=1)
    parser.add_argument('--timeout', type=float, default=600.0,
                        help='seconds before every process is killed (default 600)')
    parser.add_argument('--grace', type=float, default=5.0)
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='the worker program, after --')
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        parser.error('expected a worker command after --, e.g. -- python train.py')
    procs = launch(command, args.num_workers, args.num_servers, timeout=args.timeout,
                   grace=args.grace)
    for p in procs:
        for line in p.output.splitlines():
            print('[%s] %s' % (p.name, line))
        note = ' (stopped: %s)' % p.stopped if p.stopped else ''
        print('[%s] exit code %s%s' % (p.name, p.returncode, note))
    return exit_status(procs)


if __name__ == '__main__':
    sys.exit(main())
