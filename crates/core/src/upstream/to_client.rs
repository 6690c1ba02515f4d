//! Handing a stream's data to the client's body, with patience for a slow
//! reader and none for one that stopped reading.

use std::time::Duration;

use tokio::sync::mpsc::Sender;

/// Why a client no longer takes a stream's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientGone {
    /// Its connection closed.
    Left,
    /// It took nothing for the whole patience while data waited for it.
    Stalled(Duration),
}

impl ClientGone {
    /// What the attempt's record says of it.
    pub fn detail(self) -> String {
        match self {
            Self::Left => "the client left mid-stream; the upstream stream was closed".into(),
            Self::Stalled(patience) => format!(
                "the client took nothing for {} ms; the stream and its upstream were closed",
                patience.as_millis()
            ),
        }
    }
}

/// Sends `item` into a client's bounded body channel. A client that reads
/// slowly slows the stream (and through it Bedrock); one that takes nothing
/// for `patience` (it stopped reading but keeps its connection open) is
/// given up on, so it cannot hold its queue slot, its deployment's
/// concurrency slot and an upstream stream forever.
pub async fn hand_to_client<T>(
    to_client: &Sender<T>,
    item: T,
    patience: Duration,
) -> Result<(), ClientGone> {
    match tokio::time::timeout(patience, to_client.send(item)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ClientGone::Left),
        Err(_) => Err(ClientGone::Stalled(patience)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_stops_reading_is_given_up_after_the_patience() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let patience = Duration::from_millis(50);
        assert_eq!(hand_to_client(&tx, 1, patience).await, Ok(()));
        // The buffer is full and nobody reads.
        assert_eq!(
            hand_to_client(&tx, 2, patience).await,
            Err(ClientGone::Stalled(patience))
        );
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(hand_to_client(&tx, 3, patience).await, Ok(()));
        drop(rx);
        assert_eq!(
            hand_to_client(&tx, 4, patience).await,
            Err(ClientGone::Left)
        );
    }
}
