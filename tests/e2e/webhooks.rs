//! Webhooks end to end (issue: webhooks).
