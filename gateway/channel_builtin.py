"""The channels creditgate knows without configuration (:mod:`gateway.channels`)."""

from __future__ import annotations

from config.fields import ChannelRule

BUILTIN: dict[str, ChannelRule] = {
    "web": ChannelRule(),  # a site's own chat widget: the user in X-Channel-User-Id
    "slack": ChannelRule(
        user_pointer="/event/user",
        idempotency_pointer="/event_id",
        skip_if_equals={"/type": ["url_verification", "app_rate_limited"]},
        # The bot's own messages echoed back are not user messages.
        skip_if_present=["/event/bot_id"],
    ),
    "msteams": ChannelRule(
        user_pointer="/from/id",
        idempotency_pointer="/id",
        skip_if_equals={
            "/type": [
                "typing",
                "conversationUpdate",
                "installationUpdate",
                "contactRelationUpdate",
                "messageReaction",
                "endOfConversation",
            ]
        },
    ),
    "whatsapp": ChannelRule(
        user_pointer="/entry/*/changes/*/value/messages/*/from",
        idempotency_pointer="/entry/*/changes/*/value/messages/*/id",
        bill_only_if_present=["/entry/*/changes/*/value/messages/*"],
        # Meta signs no time: each message's and status's own (gateway.channel_stamps).
        timestamp_pointers=[
            "/entry/*/changes/*/value/messages/*/timestamp",
            "/entry/*/changes/*/value/statuses/*/timestamp",
        ],
    ),
}
