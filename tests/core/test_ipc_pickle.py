"""ReqOutput pickles through its own __reduce__: every field must survive, including ones added later."""

from __future__ import annotations

import dataclasses
import pickle

from sgl.core.ipc import BatchOutput, FinishReason, ReqOutput


def test_every_req_output_field_survives_pickling() -> None:
    # a distinct non-default value per field: a field missing from __reduce__ comes back as its default (or shifts
    # the others) and the comparison fails
    values = {
        "rid": "r-1", "new_token_ids": [3, 4], "finished": FinishReason("stop", "</s>", "m", 400),
        "prompt_tokens": 5, "completion_tokens": 6, "cached_tokens": 7, "output_logprobs": [(-0.5, 3)],
        "output_top_logprobs": [[(-0.5, 3), (-1.5, 9)]], "input_logprobs": [(None, 1), (-2.0, 2)],
        "input_top_logprobs": [[(-2.0, 2)]], "spec_verify_ct": 8, "embedding": [0.25, -1.0],
    }
    assert set(values) == {f.name for f in dataclasses.fields(ReqOutput)}
    out = ReqOutput(**values)  # type: ignore[arg-type]
    back = pickle.loads(pickle.dumps(BatchOutput([out, ReqOutput("r-2", [], None, 1, 0, 0)])))
    assert back.outputs == [out, ReqOutput("r-2", [], None, 1, 0, 0)]
