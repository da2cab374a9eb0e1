import pytest

from fundusgen.errors import FundusgenError
from fundusgen.caption.prompt import MAX_PROMPT_CHARS, check_prompt
from fundusgen.model.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder("minilm")


def test_bundled_minilm_gives_per_token_states_offline(encoder):
    states, mask = encoder.encode(["left eye, moderate non-proliferative diabetic retinopathy", ""])
    assert states.shape[-1] == 384 == encoder.dim
    assert mask[0].sum() > mask[1].sum() >= 2  # the empty caption still has its special tokens


def test_captions_longer_than_the_window_are_never_cut(encoder):
    short = TextEncoder("minilm", window=32)
    caption = " ".join(["scattered microaneurysms and dot haemorrhages"] * 30)
    n = short.token_count(caption)
    states, mask = short.encode([caption])
    assert n > 32
    assert int(mask.sum()) >= n  # every token is encoded (plus one CLS/SEP pair per window)


def test_empty_and_overlong_prompts_are_one_line_errors():
    with pytest.raises(FundusgenError, match="empty prompt"):
        check_prompt("   ")
    with pytest.raises(FundusgenError, match=f"10000 characters.*{MAX_PROMPT_CHARS}"):
        check_prompt("a" * 10000)


def test_an_unknown_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(FundusgenError, match="cannot load"):
        TextEncoder(str(tmp_path / "no-such-encoder"))
