"""``superanimal-jax`` command line: thin wrappers over the library functions."""

from __future__ import annotations

import argparse
import json
import sys


def _convert(args) -> int:
    from superanimal_jax.converter import convert

    out = convert(pose=args.pose, detector=args.detector, out=args.out, overwrite=args.overwrite)
    meta = json.loads((out / 'metadata.json').read_text())
    for network in ('pose', 'detector'):
        if network in meta:
            src = meta[network]['source']
            print(f"{network}: {src['file']} [{src['format']}] -> {src['loaded']} tensors loaded, "
                  + ', '.join(f"{i['count']} ignored ({i['reason']})" for i in src['ignored']))
    print(f'wrote {out}')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='superanimal-jax', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    convert = commands.add_parser('convert', help='convert released PyTorch weights to a model directory')
    convert.add_argument('--pose', metavar='SRC', help='pose_model.pth, superanimal_topviewmouse_hrnet_w32.pt '
                         'or a bare state dict')
    convert.add_argument('--detector', metavar='SRC', help='detector.pt, superanimal_topviewmouse_fasterrcnn_'
                         'resnet50_fpn_v2.pt or a bare state dict')
    convert.add_argument('--out', metavar='DIR', required=True, help='model directory to write')
    convert.add_argument('--overwrite', action='store_true', help='replace DIR if it exists')
    convert.set_defaults(run=_convert)
    args = parser.parse_args(argv)
    if args.command == 'convert' and not (args.pose or args.detector):
        parser.error('convert needs --pose and/or --detector')
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f'superanimal-jax {args.command}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
