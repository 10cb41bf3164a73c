"""Account administration: workspaces, apps, credits and payments, authorization and API
tokens, channel secrets, the egress policy, the Redis projection of accounts and its
check, plan usage, owner notifications, and list paging."""
