"""The released SuperAnimal-TopViewMouse weights from the DeepLabCut model hub, converted once and
cached.

Parity with DeepLabCut: docs/parity/hub.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from superanimal_jax.checkpoints.convert import convert
from superanimal_jax.checkpoints.model_dir import METADATA
from superanimal_jax.errors import HubError
from superanimal_jax.io.files import replace_directory, sha256

REPO_ID = 'mwmathis/DeepLabCutModelZoo-SuperAnimal-TopViewMouse'
POSE_FILE = 'superanimal_topviewmouse_hrnet_w32.pt'
DETECTOR_FILE = 'superanimal_topviewmouse_fasterrcnn_resnet50_fpn_v2.pt'


def default_cache_dir() -> Path:
    """Where converted models are cached: ``$SUPERANIMAL_JAX_CACHE``, else ``~/.cache/superanimal_jax``."""
    return Path(os.environ.get('SUPERANIMAL_JAX_CACHE') or Path.home() / '.cache' / 'superanimal_jax')


def fetch_weights(revision: str | None = None) -> dict[str, Path]:
    """The two released files from the model hub (or the local Hugging Face cache)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:
        raise HubError('downloading needs huggingface_hub: pip install huggingface_hub') from err
    files = {}
    for name, filename in (('pose', POSE_FILE), ('detector', DETECTOR_FILE)):
        try:
            files[name] = Path(hf_hub_download(REPO_ID, filename, revision=revision))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
            raise HubError(
                f'cannot get {filename} from https://huggingface.co/{REPO_ID} ({type(err).__name__}: '
                f'{str(err).splitlines()[0] if str(err) else "offline"}). Either run '
                f'`superanimal-jax download` on a machine with network access (and copy its Hugging Face '
                f'cache), or download {POSE_FILE} and {DETECTOR_FILE} yourself and pass them with '
                f'`--weights {POSE_FILE} {DETECTOR_FILE}` (or `superanimal-jax convert --pose ... '
                f'--detector ... --out DIR`, then `--model DIR`).') from err
    return files


def ensure_model(cache_dir: str | os.PathLike | None = None, *, pose: str | os.PathLike | None = None,
                 detector: str | os.PathLike | None = None, force: bool = False) -> Path:
    """A converted model directory for the released weights, or for local ``pose`` + ``detector``
    files (no network).  Converts once per distinct pair of files; later calls return the cached
    directory.  A conversion that fails or is interrupted leaves nothing that looks complete."""
    if (pose is None) != (detector is None):
        raise ValueError('give both pose= and detector= files, or neither (to use the model hub)')
    if pose is None:
        files, source = fetch_weights(), {'repo_id': REPO_ID}
    else:
        files, source = {'pose': Path(pose), 'detector': Path(detector)}, {'local': True}
        for path in files.values():
            if not path.is_file():
                raise FileNotFoundError(f'{path}: no such weight file')
    digests = {name: sha256(path) for name, path in files.items()}
    key = hashlib.sha256((digests['pose'] + digests['detector']).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f'topviewmouse-{key}'
    if (target / METADATA).is_file() and not force:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix='.converting-') as tmp:
        out = convert(pose=files['pose'], detector=files['detector'], out=Path(tmp) / 'model')
        source.update({name: {'file': files[name].name, 'sha256': digests[name]} for name in files})
        (out / 'source.json').write_text(json.dumps(source, indent=1) + '\n')
        replace_directory(out, target)
    return target
