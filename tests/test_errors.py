"""utils.errors: every error the kit raises on purpose is a KitError and keeps its older built-in base."""

import pytest

from utils.config import ConfigError, WizardConfig
from utils.data.sources import DataError, check_file
from utils.data.tokenizers import CharTokenizer, TokenizerError, load_tokenizer
from utils.errors import KitError, MissingFileError
from utils.export import ExportError
from utils.inference import InferenceError
from utils.precision import PrecisionError
from utils.training.callbacks.last_checkpoint import TrainingStopped
from utils.run_folder.checkpoints import IncompatibleCheckpointError
from utils.training.callbacks.health import Fp16HealthError, TrainingHealthError
from utils.run_folder.lock import RunFolderBusyError
from utils.models.user_models import UserModelError
from utils.wandb_helpers import WandbError

OLD_BASES = {
    ConfigError: ValueError, PrecisionError: ValueError, UserModelError: ValueError, DataError: ValueError,
    TokenizerError: ValueError, ExportError: ValueError, InferenceError: ValueError, WandbError: ValueError,
    RunFolderBusyError: RuntimeError, TrainingStopped: RuntimeError, TrainingHealthError: RuntimeError,
    Fp16HealthError: RuntimeError, IncompatibleCheckpointError: RuntimeError, MissingFileError: FileNotFoundError,
}


@pytest.mark.parametrize("error", OLD_BASES, ids=lambda cls: cls.__name__)
def test_every_kit_error_shares_the_base_and_keeps_its_old_one(error):
    assert issubclass(error, KitError)
    assert issubclass(error, OLD_BASES[error])  # code that caught the old base still does


def test_missing_user_files_are_kit_errors_and_still_file_not_found(tmp_path):
    with pytest.raises(MissingFileError, match="No config file at"):
        WizardConfig.load(tmp_path / "nope.json")
    with pytest.raises(MissingFileError, match="Dataset file not found"):
        check_file(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="expected tokenizer_meta.json"):
        load_tokenizer(tmp_path)


def test_an_unknown_character_is_a_tokenizer_error():
    with pytest.raises(TokenizerError, match="character 'z' is not in this char tokenizer's vocabulary"):
        CharTokenizer.from_blocks(["abc"]).encode("abz")
