"""prompt_from_messages: which text of a chat is encoded."""

from __future__ import annotations

from router import prompt_from_messages


def test_the_last_user_turn_is_encoded_without_the_system_prompt() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    assert prompt_from_messages(messages) == "second question"


def test_content_parts_are_joined_and_images_are_skipped() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "this chart"},
            ],
        }
    ]
    assert prompt_from_messages(messages) == "Describe\nthis chart"


def test_a_chat_without_user_text_falls_back_to_other_turns() -> None:
    assert (
        prompt_from_messages([{"role": "system", "content": "Summarise the news."}])
        == "Summarise the news."
    )
    assert prompt_from_messages([]) == ""
