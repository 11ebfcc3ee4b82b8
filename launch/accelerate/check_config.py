"""Check an accelerate launch config, with the flags you will launch it with, before starting machines.

    python launch/accelerate/check_config.py launch/accelerate/multi_node.yaml --main_process_ip 10.0.0.1

Prints one line and exits 0, or names the file and the fault and exits 2. Run it where a mistake would
hang instead of failing: a launch of several machines without node 0's address waits in torchrun's
rendezvous (retrying the host "None") before the trainer starts, so the trainer cannot report it.
"""

from __future__ import annotations

import argparse
import sys

from accelerate.commands.config.config_args import load_config_from_file


def faults(path: str, num_machines: int | None = None, num_processes: int | None = None,
           main_process_ip: str | None = None, main_process_port: int | None = None) -> tuple[list[str], str]:
    """(faults, summary) of the config at `path` with these command-line overrides, as accelerate launch applies them."""
    try:
        config = load_config_from_file(path)
    except (OSError, ValueError, TypeError) as e:  # missing file, bad YAML, unknown key
        return [f"unreadable ({str(e).splitlines()[0]})"], ""
    machines = num_machines if num_machines is not None else config.num_machines
    processes = num_processes if num_processes is not None else config.num_processes
    ip = main_process_ip if main_process_ip is not None else config.main_process_ip
    port = main_process_port if main_process_port is not None else config.main_process_port
    found = []
    if machines > 1 and not ip:
        found.append(f"num_machines is {machines} but main_process_ip is not set: give node 0's address "
                     "(--main_process_ip ADDR, the same on every machine)")
    if machines > 1 and not port:
        found.append(f"num_machines is {machines} but main_process_port is not set (--main_process_port PORT)")
    if processes % machines:
        found.append(f"num_processes {processes} (all machines together) is not a multiple of num_machines {machines}")
    where = f", main process {ip}:{port}" if machines > 1 else ""
    kind = getattr(config.distributed_type, "value", config.distributed_type)
    return found, f"{machines} machine(s) x {processes // max(machines, 1)} process(es), {kind}{where}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config_file")
    p.add_argument("--num_machines", type=int)
    p.add_argument("--num_processes", type=int)
    p.add_argument("--main_process_ip")
    p.add_argument("--main_process_port", type=int)
    args = p.parse_args(argv)
    found, summary = faults(args.config_file, args.num_machines, args.num_processes, args.main_process_ip,
                            args.main_process_port)
    for fault in found:
        print(f"{args.config_file}: {fault}", file=sys.stderr)
    if found:
        return 2
    print(f"{args.config_file}: ok: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
