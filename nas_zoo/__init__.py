"""nas_zoo: neural-architecture-search results as timm models.

``import nas_zoo`` registers every built-in entry (``configs/models``) and every ``*.yaml`` entry in the
directories of ``NAS_ZOO_ENTRIES`` (``os.pathsep``-separated) with timm::

    import nas_zoo, timm
    model = timm.create_model('dna_a', pretrained=True)
"""
from .checkpoint import CheckpointError
from .entry import ArchEntry, EntryError, load_entry
from .registry import get_entry, list_entries, register_directory, register_entry
from .weights import WeightsNotFoundError

__version__ = "0.1.0"
__all__ = ["ArchEntry", "EntryError", "CheckpointError", "WeightsNotFoundError", "load_entry", "register_entry",
           "register_directory", "get_entry", "list_entries"]


def _register_all() -> None:
    from .registry import register_builtin_entries, register_env_directories, register_family_entrypoints

    register_family_entrypoints()
    register_builtin_entries()
    register_env_directories()


_register_all()
