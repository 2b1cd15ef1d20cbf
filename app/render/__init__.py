"""Prompt rendering shared by serving and training (see `app.render.prompt`)."""

from app.render.prompt import (
    SYSTEM_ROLES,
    ChatMessage,
    Rendered,
    RenderError,
    TaskStyle,
    ToolCall,
    apply_template,
    chat_ids,
    chat_text,
    render_chat,
    render_completion,
    template_knows_tools,
    with_system_prompt,
)

__all__ = [
    "SYSTEM_ROLES",
    "ChatMessage",
    "RenderError",
    "Rendered",
    "TaskStyle",
    "ToolCall",
    "apply_template",
    "chat_ids",
    "chat_text",
    "render_chat",
    "render_completion",
    "template_knows_tools",
    "with_system_prompt",
]
