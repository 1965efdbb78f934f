//! Validation end to end (issue: validation).
