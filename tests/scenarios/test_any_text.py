"""Whatever anyone types after any command, the bot answers clearly: 200, ephemeral, no crash;
or, for `/deploy` with no version (nothing, or only a word), it opens the deploy form.

Arbitrary text goes through the whole path (signature, bolt, handler, parser, policy, Redis,
engine look-ups) of a running bot. The pipeline's image is not on the engine, so nothing typed
can start a container; halts and resumes really happen.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.services.forms import wants_form
from tests.support.bot_harness import CHANNEL, InProcessBot, docker_pipeline, free_port
from tests.support.policy import ADMIN, DEV, OTHER_CHANNEL, OUTSIDER, config
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]
COMMANDS = ["/deploy", "/rollback", "/halt", "/resume", "/pipeline"]
INTERNAL_ERROR = "Something went wrong on our side"


def typed_text(pipeline: str) -> st.SearchStrategy[str]:
    """Anything Unicode holds, and near-misses of real commands built from their words."""
    words = st.sampled_from(
        [
            pipeline,
            pipeline.upper(),
            "all",
            "history",
            "audit",
            "incident",
            "help",
            "--force",
            "-f",
            "\u2014force",
            "--dry-run",
            '"',
            "'",
            "\u201c",
            "\\",
            "1",
            "2",
            "1.4.2",
            "latest",
            "sha256:" + "a" * 64,
            "immune-test-fuzz/none:1",
            "other/repo:1",
            "<@U0DEV1>",
            "<https://example.test|link>",
            "\n",
            "\x00",
            "x" * 200,
        ]
    )
    return st.one_of(
        st.text(max_size=300),
        st.lists(st.one_of(words, st.text(max_size=12)), max_size=8).map(" ".join),
        st.text(min_size=1990, max_size=2100),
    )


def test_any_text_through_the_bot_gets_a_clear_ephemeral_answer(
    start_bot: StartBot, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    pipeline = docker_pipeline(
        image="immune-test-fuzz/none", container_name=unique_name, port=free_port()
    )
    pipeline["deployers"] = [DEV]
    bot = start_bot(config(name, pipeline))
    seen: dict[str, int] = {}

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        command=st.sampled_from(COMMANDS),
        text=typed_text(name),
        user=st.sampled_from([DEV, ADMIN, OUTSIDER]),
        channel=st.sampled_from([CHANNEL, OTHER_CHANNEL]),
    )
    def answers_clearly(command: str, text: str, user: str, channel: str) -> None:
        forms_opened = len(emulator.calls("views.open"))
        reply = bot.slack.command(command, text, user_id=user, channel_id=channel)
        assert reply.status == 200, (command, text, reply.status, reply.text)
        if reply.text == "":
            # No answer in the ack: only for a /deploy without a version, which opened a form.
            assert wants_form(command, text), (command, text)
            opened = emulator.calls("views.open")[forms_opened:]
            assert len(opened) == 1 and opened[0].ok, (command, text, opened)
            seen[command] = seen.get(command, 0) + 1
            return
        body = reply.json()
        assert body.get("response_type") == "ephemeral", (command, text, body)
        answer = body.get("text")
        assert isinstance(answer, str) and answer.strip(), (command, text, body)
        assert INTERNAL_ERROR not in answer, (command, text, answer)
        seen[command] = seen.get(command, 0) + 1

    answers_clearly()
    assert set(seen) == set(COMMANDS)
    assert bot.ctx.store.recent_rollouts(name, 10) == []  # nothing typed started a rollout
