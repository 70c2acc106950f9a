"""Which parameters differ between two T5X checkpoints (and what the second one holds).

python tests/t5x_e2e/compare.py <checkpoint_a> <checkpoint_b>
"""

import sys

import numpy as np
from flax import traverse_util

from mpt_jax.t5x_ext.export import read_params


def flat(ckpt):
    return {
        "/".join(k): np.asarray(v)
        for k, v in traverse_util.flatten_dict(read_params(ckpt, "")).items()
    }


a, b = sys.argv[1], sys.argv[2]
fa, fb = flat(a), flat(b)
print(f"{b}: {len(fb)} parameters; top level {sorted({k.split('/')[0] for k in fb})}")
only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
common = sorted(set(fa) & set(fb))
changed = [k for k in common if fa[k].shape != fb[k].shape or not np.array_equal(fa[k], fb[k])]
print("  only in first :", only_a)
print("  only in second:", only_b)
print(f"  equal: {len(common) - len(changed)} of {len(common)} common; changed:", changed)
