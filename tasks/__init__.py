"""seqio tasks and mixtures for the MPT benchmarks (installed as ``mpt_jax.tasks``).

Importing this package registers (once; importing again is a no-op):

- GLUE ``mpt_glue_{mnli,qqp,qnli,sst2,stsb,mrpc,rte,cola}`` (``glue.py``);
- SuperGLUE ``mpt_superglue_{multirc,boolq,wic,wsc,cb,record}`` (``superglue.py``);
- SQuAD ``mpt_squad`` and MRQA 2019 ``mpt_mrqa_{nq,hotpotqa,searchqa,newsqa}``
  (``mrqa.py``);
- ``mpt_{winogrande,yelp_polarity,scitail,paws}`` (``others.py``);
- few-shot variants ``<task>_{4,16,32}shot`` of each (``few_shot.py``);
- mixtures ``mpt_{source,glue,superglue,mrqa,others}_mixture`` (``source.py``).

- the embedded synthetic benchmark ``mpt_embedded_*`` (``embedded.py``);
- your own tasks from jsonl/TSV files, bound in gin (``file_tasks.tasks``, ``files.py``;
  registered by ``mpt-jax`` before a job, or by ``files.register_file_tasks()``).

``registered_names.txt`` lists every name registered here, so ``mpt-jax`` checks a task
name before it imports seqio and TensorFlow; after adding or renaming a task, rewrite it
with ``python -m mpt_jax.tasks.names`` (``tests/test_task_names.py`` checks it).

A T5X gin file::

    import mpt_jax.tasks
    MIXTURE_OR_TASK_NAME = 'mpt_source_mixture'
    TASK_FEATURE_LENGTHS = {'inputs': 256, 'targets': 128}
    PromptEncDecFeatureConverter.task_index = @task_index()
    task_index.mixture = 'mpt_source_mixture'   # task ids: its tasks by name
    t5_vocabulary.sentencepiece_model_path = '/data/t5/spiece.model'
    train/utils.DatasetConfig.pack = False             # prompts cannot be packed

Nothing is downloaded: TFDS data must be prepared in the TFDS data directory, MRQA (and
any task read from jsonl) is bound with ``task_data_files.files``.
"""

from . import embedded, files  # noqa: F401  (embedded registers on import; files: gin binding)
from .glue import register_glue
from .mrqa import register_qa
from .others import register_others
from .source import register_mixtures
from .superglue import register_superglue


def register_all() -> None:
    """Registers every benchmark task and mixture; safe to call more than once."""
    register_glue()
    register_superglue()
    register_qa()
    register_others()
    register_mixtures()


register_all()
