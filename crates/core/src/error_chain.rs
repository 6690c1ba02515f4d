//! One way to show an error to a person: its message and its causes.
//!
//! Every error type of Switchyard says only what went wrong at its own layer
//! ("cannot read config x.toml") and keeps what caused it as its `source`
//! (the `io::Error`), so code can inspect the cause and nothing is said
//! twice. Where a person reads the error (an API's JSON `message`, the
//! command line, a report), [`render`] joins the chain.

use std::error::Error;

/// `error`'s message followed by each of its causes, joined by ": ".
pub fn render(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
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
}
