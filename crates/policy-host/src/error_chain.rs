//! One way to show an error to a person: its message and its causes.
//!
//! Every error type of Switchyard says only what went wrong at its own layer
//! ("cannot read config x.toml") and keeps what caused it as its `source`
//! (the `io::Error`), so code can inspect the cause and nothing is said
//! twice. Where a person reads the error (an API's JSON `message`, the
//! command line, a report), [`render`] joins the chain.

use std::error::Error;

/// `error`'s message followed by each of its causes, joined by ": ". A
/// cause whose message the error just above it already says is left out:
/// some libraries' errors (the AWS SDK's among them) print their source in
/// their own message too, or wrap an error in a layer with the same words.
pub fn render(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut above = text.clone();
    let mut cause = error.source();
    while let Some(next) = cause {
        let message = next.to_string();
        if !above.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        above = message;
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config {0}")]
    struct ReadConfig(&'static str, #[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once_in_order() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = ReadConfig("x.toml", io);
        assert_eq!(render(&error), "cannot read config x.toml: no such file");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("an error occurred while loading credentials")]
    struct Loading(#[source] Box<dyn Error + Send + Sync>);

    #[derive(Debug, thiserror::Error)]
    #[error("no credentials: {0}")]
    struct SaysItsSource(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Link(&'static str, #[source] Option<Box<dyn Error + Send + Sync>>);

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let inner = Loading(Box::new(std::io::Error::other("exit status 1")));
        let twice = Loading(Box::new(inner));
        assert_eq!(
            render(&twice),
            "an error occurred while loading credentials: exit status 1"
        );
        let io = std::io::Error::other("the issuer is down");
        assert_eq!(
            render(&SaysItsSource(io)),
            "no credentials: the issuer is down"
        );
        // A short cause said further up the chain, but not by the error
        // just above it, is kept.
        let chain = Link(
            "connecting timed out",
            Some(Box::new(Link(
                "retrying",
                Some(Box::new(Link("timed out", None))),
            ))),
        );
        assert_eq!(render(&chain), "connecting timed out: retrying: timed out");
    }
}
