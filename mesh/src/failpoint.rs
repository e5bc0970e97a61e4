//! Named crash points for fault tests: `SHAREMESH_FAILPOINTS=saga.after_confirm_hold` makes the
//! process abort (as abruptly as SIGKILL: no drain, no flush) when it reaches that point. A test
//! uses it to stop a process between two steps no signal could be timed to hit; unset — always,
//! outside tests — a crash point costs one lookup in an empty list.

use std::sync::OnceLock;

use crate::config::{ENV_FAILPOINTS, Env, ProcessEnv};

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| parse(ProcessEnv.get(ENV_FAILPOINTS).as_deref().unwrap_or("")))
}

fn parse(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Aborts the process if the crash point `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|armed| armed == name) {
        tracing::error!(failpoint = name, "crash point reached: aborting as armed by {ENV_FAILPOINTS}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_are_comma_separated() {
        assert_eq!(super::parse(" a.b , c ,"), vec!["a.b".to_owned(), "c".to_owned()]);
        assert!(super::parse("").is_empty());
    }
}
