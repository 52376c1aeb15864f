"""Open our h5 result files where DeepLabCut runs (its reference environment: pandas 2.x).

    .ref/bin/python tests/reference/read_h5_in_deeplabcut.py --out DIR --h5 A.h5 [B.h5 ...]
        [--video V --labeled A.h5]

Each ``--h5`` is read with that environment's ``pandas.read_hdf`` (key ``df_with_missing``) and
saved to ``DIR/<stem>.npz`` (values, index as strings, columns as JSON); with ``--video``,
DeepLabCut's ``make_labeled_video.create_video`` draws the ``--labeled`` h5 on the video into
``DIR/labeled.mp4``.  ``DIR/read.json`` records the versions and what was written.  The test
(``tests/test_pipeline_parity.py``, reference tier) compares with the same files read by our
environment's pandas.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import cv2
    import deeplabcut
    import pandas as pd
    import tables

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--h5', type=Path, nargs='+', required=True)
    parser.add_argument('--video', type=Path)
    parser.add_argument('--labeled', type=Path, help='the h5 to draw on --video')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {'versions': {'deeplabcut': deeplabcut.__version__, 'pandas': pd.__version__,
                           'tables': tables.__version__}, 'read': {}}
    for h5 in args.h5:
        frame = pd.read_hdf(h5, 'df_with_missing')
        np.savez(args.out / f'{h5.stem}.npz', values=frame.to_numpy(),
                 index=np.array([str(i) for i in frame.index]),
                 columns=np.str_(json.dumps([list(c) for c in frame.columns])),
                 names=np.str_(json.dumps(list(frame.columns.names))))
        report['read'][h5.name] = {'rows': len(frame), 'dtypes': sorted({str(d) for d in frame.dtypes})}
    if args.video is not None:
        from deeplabcut.utils.make_labeled_video import create_video

        output = args.out / 'labeled.mp4'
        create_video(str(args.video), str(args.labeled), pcutoff=0.1, output_path=str(output))
        capture = cv2.VideoCapture(str(output))
        report['labeled_video'] = {'file': output.name, 'frames': int(capture.get(cv2.CAP_PROP_FRAME_COUNT))}
        capture.release()
    (args.out / 'read.json').write_text(json.dumps(report, indent=1) + '\n')


if __name__ == '__main__':
    main()
