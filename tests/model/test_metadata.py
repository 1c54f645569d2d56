"""A model folder's small JSON files (hbt's metadata, sentence-transformers' modules): a damaged one is named."""

from __future__ import annotations

import json

import pytest

from hbt.config import DamagedFileError
from hbt.model.metadata import (
    METADATA_FILE,
    ST_CONFIG_FILE,
    ST_MODULES_FILE,
    EncoderMetadata,
    read_metadata,
    read_modules,
    write_metadata,
)


def test_metadata_is_written_whole(tmp_path):
    write_metadata(tmp_path, EncoderMetadata(pooling="cls", query_prefix="q: "))
    assert [p.name for p in tmp_path.iterdir()] == [METADATA_FILE]
    assert read_metadata(tmp_path).pooling == "cls"


@pytest.mark.parametrize("name, content, read", [
    (METADATA_FILE, "", read_metadata),
    (METADATA_FILE, '{"pooling": "me', read_metadata),
    (ST_MODULES_FILE, '[{"idx": 0, "path": ""', read_modules),
    (ST_MODULES_FILE, '{"idx": 0}', read_modules),  # an object where a list belongs
], ids=["metadata-empty", "metadata-cut", "modules-cut", "modules-object"])
def test_a_damaged_metadata_file_is_named(tmp_path, name, content, read):
    (tmp_path / name).write_text(content)
    with pytest.raises(DamagedFileError) as e:
        read(tmp_path)
    assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value)


def test_a_damaged_sentence_transformers_config_is_named(tmp_path):
    (tmp_path / ST_MODULES_FILE).write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                         "type": "sentence_transformers.models.Transformer"}]))
    (tmp_path / ST_CONFIG_FILE).write_text('{"prompts": {"query": "q')
    with pytest.raises(DamagedFileError, match=rf"^{tmp_path / ST_CONFIG_FILE}:1:\d+: damaged or truncated"):
        read_metadata(tmp_path)
