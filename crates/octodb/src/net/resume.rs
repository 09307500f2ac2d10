//! The resumed handshake: a device that holds a session ticket ([`super::ticket`]) from this
//! primary proves it holds the ticket's secret instead of running the full XX handshake.
//!
//! Wire (protocol 9 and newer; the frames are `[len][bytes]` like XX's):
//! 1. initiator: `[RESUME_TAG][ticket length][ticket][Noise message 1]`, the Noise pattern
//!    `Noise_NNpsk0_25519_AESGCM_BLAKE2s` with the ticket's secret as the pre-shared key and
//!    the ticket in the prologue (so the message is bound to that ticket). Message 1's payload
//!    is the version offer, encrypted under the secret.
//! 2. responder: either `[REFUSED_TAG]` (the ticket is not one it can take: another primary,
//!    a restart, expired; the initiator then runs the full handshake on the same connection)
//!    or Noise message 2, whose payload is `[chosen version][oldest][newest]` as in XX.
//!
//! Only the holder of the secret can complete it: the responder reads the secret back from
//! the ticket, which only it can open, and the initiator got it over an encrypted, mutually
//! authenticated connection with that primary. Each side's identity is the one that full
//! handshake proved (the ticket carries the device's; the device keeps the primary's). The
//! `ee` exchange keeps forward secrecy; a replayed message 1 leads nowhere, as the replayer
//! cannot compute `ee`. The refusal is unauthenticated and can only send a device to the full
//! handshake, never around it.
//!
//! The network key (`key=`) plays no part here: a ticket is issued only over a connection
//! that proved it, and only the process that issued it, which holds the same network key
//! until it restarts (and forgets its ticket keys), can take it.

use std::sync::Arc;

use snow::HandshakeState;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::claims::{agreed_by_responder, Negotiation};
use super::ticket::{Opened, Resumption};
use super::transport::{
    noise_error, read_frame, write_frame, Established, HandshakeOptions, NetError,
};
use super::version::{self, Versions};
use super::{SecureReader, SecureWriter};

const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PROLOGUE: &[u8] = b"octodb/resume/1";
/// First bytes of a resumption. An XX message 1 begins with a random ephemeral key, which
/// starts so with probability 2^-64.
const RESUME_TAG: &[u8; 8] = b"\xa8resume1";
/// The responder's whole answer when it does not take the ticket.
const REFUSED_TAG: &[u8; 8] = b"\xa8refused";
/// `[chosen][oldest][newest]`.
const ANSWER_LEN: usize = 3;
/// Noise message 2 of NNpsk0: an ephemeral key and an encrypted answer.
const MESSAGE_2_MAX: usize = 32 + ANSWER_LEN + 16;

/// What came of offering a ticket.
pub(super) enum Offered {
    Resumed(Box<Established>),
    /// The responder did not take it; the halves go on to the full handshake.
    Refused(OwnedReadHalf, OwnedWriteHalf),
}

/// Splits a responder's first frame into a ticket and Noise message 1, when it is a
/// resumption.
pub(super) fn parse(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = frame.strip_prefix(RESUME_TAG.as_slice())?;
    let (&ticket_len, rest) = rest.split_first()?;
    let ticket_len = usize::from(ticket_len);
    (rest.len() > ticket_len).then(|| rest.split_at(ticket_len))
}

fn noise(secret: &[u8; 32], ticket: &[u8], initiator: bool) -> Result<HandshakeState, NetError> {
    let prologue = [PROLOGUE, ticket].concat();
    let builder = snow::Builder::with_resolver(
        PATTERN.parse().map_err(noise_error)?,
        Box::new(crate::crypto::NoiseSuite),
    )
    .prologue(&prologue)
    .psk(0, secret);
    match initiator {
        true => builder.build_initiator(),
        false => builder.build_responder(),
    }
    .map_err(noise_error)
}

/// Initiator: offers `resumption`'s ticket on a fresh connection.
pub(super) async fn offer(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    opts: &HandshakeOptions,
    resumption: &Resumption,
) -> Result<Offered, NetError> {
    let ticket = &resumption.ticket;
    let ticket_len = u8::try_from(ticket.len())
        .map_err(|_| NetError::Malformed(format!("a ticket of {} bytes", ticket.len())))?;
    let mut hs = noise(&resumption.secret, ticket, true)?;
    let mut message = [0u8; 32 + version::OFFER_LEN + 16];
    let n = hs
        .write_message(&opts.versions.encode_offer(), &mut message)
        .map_err(noise_error)?;
    let parts: [&[u8]; 4] = [RESUME_TAG, &[ticket_len], ticket, &message[..n]];
    write_frame(&mut wr, &parts).await?;

    let mut buf = [0u8; super::transport::MAX_HANDSHAKE_MSG];
    let len = read_frame(&mut rd, &mut buf).await?;
    let reply = &buf[..len];
    if reply == REFUSED_TAG {
        return Ok(Offered::Refused(rd, wr));
    }
    if reply.len() > MESSAGE_2_MAX {
        return Err(NetError::Malformed(format!(
            "an answer of {len} bytes to a session ticket: the peer is not an octodb primary \
             of this version"
        )));
    }
    let mut answer = [0u8; MESSAGE_2_MAX];
    let n = hs.read_message(reply, &mut answer).map_err(|e| {
        NetError::Authentication(format!(
            "the primary failed the resumed handshake ({e}): it is not the primary that issued \
             this node's session ticket"
        ))
    })?;
    let [chosen, oldest, newest] = answer[..n] else {
        return Err(NetError::Malformed(format!(
            "a resumed handshake's answer of {n} bytes (expected {ANSWER_LEN})"
        )));
    };
    let theirs = Versions { oldest, newest };
    let Negotiation::Agreed { version, .. } = agreed_by_responder(&opts.versions, chosen, theirs)?
    else {
        return Err(NetError::Noise("no protocol version agreed".into()));
    };
    Ok(Offered::Resumed(Box::new(established(
        rd,
        wr,
        hs,
        opts,
        resumption.primary,
        version,
    )?)))
}

/// Responder: the initiator offered a ticket this primary does not take.
pub(super) async fn refuse(wr: &mut OwnedWriteHalf) -> Result<(), NetError> {
    write_frame(wr, &[REFUSED_TAG]).await
}

/// Responder: finishes a resumption whose ticket opened to `opened`.
pub(super) async fn respond(
    rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    opts: &HandshakeOptions,
    opened: Opened,
    ticket: &[u8],
    message_1: &[u8],
) -> Result<Established, NetError> {
    let mut hs = noise(&opened.secret, ticket, false)?;
    let mut offer = [0u8; super::transport::MAX_HANDSHAKE_MSG];
    let n = hs.read_message(message_1, &mut offer).map_err(|e| {
        NetError::Authentication(format!(
            "the peer failed the resumed handshake ({e}): it offered a session ticket without \
             holding its secret"
        ))
    })?;
    let ours = opts.versions;
    let theirs = Versions::decode_offer(&offer[..n])
        .ok_or_else(|| NetError::Malformed("a resumption without a version offer".into()))?;
    let chosen = ours.choose(&theirs);
    let mut message = [0u8; MESSAGE_2_MAX];
    let answer = [chosen.unwrap_or(0), ours.oldest, ours.newest];
    let n = hs
        .write_message(&answer, &mut message)
        .map_err(noise_error)?;
    write_frame(&mut wr, &[&message[..n]]).await?;
    let version =
        chosen.ok_or_else(|| NetError::Version(version::mismatch_advice(&ours, &theirs)))?;
    established(rd, wr, hs, opts, opened.identity, version)
}

fn established(
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    hs: HandshakeState,
    opts: &HandshakeOptions,
    peer: crate::crypto::PublicKey,
    protocol: u8,
) -> Result<Established, NetError> {
    if !hs.is_handshake_finished() {
        return Err(NetError::Noise(
            "the resumed handshake did not finish".into(),
        ));
    }
    let transport = Arc::new(hs.into_stateless_transport_mode().map_err(noise_error)?);
    let progress = super::chunks::Progress::new();
    let reader = SecureReader::new(rd, transport.clone(), opts.max_message, progress.clone());
    let writer = SecureWriter::new(wr, transport, progress);
    Ok(Established {
        reader,
        writer,
        public_key: peer,
        protocol,
        resumed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeKeys;
    use crate::net::{SecureStream, TicketKeys};
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(10);

    type Side = Result<SecureStream, NetError>;

    /// A device with `ticket` (and `secret`) connects to a primary with `tickets`.
    async fn resume_pair(
        device: &NodeKeys,
        primary: &NodeKeys,
        tickets: Option<Arc<TicketKeys>>,
        resumption: &Resumption,
    ) -> (Side, Side) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let primary = primary.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let opts = HandshakeOptions {
                tickets,
                ..Default::default()
            };
            SecureStream::accept(tcp, &primary, &opts).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let opts = HandshakeOptions::default();
        let client = SecureStream::resume(tcp, device, &opts, resumption);
        let client = timeout(LIMIT, client).await.expect("resume hung");
        let server = timeout(LIMIT, server).await.expect("accept hung").unwrap();
        (client, server)
    }

    fn resumption(keys: &TicketKeys, device: &NodeKeys, primary: &NodeKeys) -> Resumption {
        let (ticket, secret) = keys.issue(&device.public_key()).unwrap();
        Resumption::received(ticket, secret, primary.public_key(), 3600)
    }

    async fn talk(mut a: SecureStream, mut b: SecureStream) {
        a.send(b"ping").await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(timeout(LIMIT, b.recv()).await.unwrap().unwrap(), b"ping");
        b.send(b"pong").await.unwrap();
        b.flush().await.unwrap();
        assert_eq!(timeout(LIMIT, a.recv()).await.unwrap().unwrap(), b"pong");
    }

    #[tokio::test]
    async fn a_ticket_resumes_with_both_identities_and_the_newest_version() {
        let (device, primary) = (NodeKeys::generate(), NodeKeys::generate());
        let keys = Arc::new(TicketKeys::generate().unwrap());
        let r = resumption(&keys, &device, &primary);
        let (c, s) = resume_pair(&device, &primary, Some(keys), &r).await;
        let (c, s) = (c.unwrap(), s.unwrap());
        assert!(c.resumed() && s.resumed());
        assert_eq!(s.peer().public_key, device.public_key());
        assert_eq!(c.peer().public_key, primary.public_key());
        assert_eq!(c.protocol_version(), version::NEWEST);
        assert_eq!(s.protocol_version(), version::NEWEST);
        talk(c, s).await;
    }

    #[tokio::test]
    async fn a_ticket_the_primary_cannot_take_falls_back_to_the_full_handshake() {
        let (device, primary) = (NodeKeys::generate(), NodeKeys::generate());
        let issued_elsewhere = TicketKeys::generate().unwrap();
        let r = resumption(&issued_elsewhere, &device, &primary);
        // Another primary's (or a restarted one's) keys, and a primary that takes none.
        for tickets in [Some(Arc::new(TicketKeys::generate().unwrap())), None] {
            let (c, s) = resume_pair(&device, &primary, tickets, &r).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            assert!(!c.resumed() && !s.resumed());
            assert_eq!(s.peer().public_key, device.public_key());
            assert_eq!(c.peer().public_key, primary.public_key());
            talk(c, s).await;
        }
    }

    #[tokio::test]
    async fn a_ticket_without_its_secret_gets_nowhere() {
        // Someone who saw (or stole) a device's ticket, but not its secret, offers it.
        let (device, primary) = (NodeKeys::generate(), NodeKeys::generate());
        let keys = Arc::new(TicketKeys::generate().unwrap());
        let mut r = resumption(&keys, &device, &primary);
        r.secret[0] ^= 1;
        let thief = NodeKeys::generate();
        let (c, s) = resume_pair(&thief, &primary, Some(keys), &r).await;
        let s = s.unwrap_err();
        assert!(
            matches!(&s, NetError::Authentication(m) if m.contains("without holding its secret")),
            "{s}"
        );
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn a_primary_that_did_not_issue_the_ticket_cannot_pose_as_the_one_that_did() {
        // The ticket opens nowhere else, so an impostor can only refuse it or fail the
        // Noise message: it never completes a resumed handshake as the primary the device
        // trusts.
        let (device, primary) = (NodeKeys::generate(), NodeKeys::generate());
        let keys = TicketKeys::generate().unwrap();
        let r = resumption(&keys, &device, &primary);
        let impostor = NodeKeys::generate();
        let its_own = Some(Arc::new(TicketKeys::generate().unwrap()));
        let (c, _) = resume_pair(&device, &impostor, its_own, &r).await;
        let c = c.unwrap();
        assert!(!c.resumed(), "the full handshake ran");
        // ...which proves the impostor's own identity, not the one kept with the ticket:
        // the device's check of its primary's key then refuses it.
        assert_eq!(c.peer().public_key, impostor.public_key());
    }

    #[tokio::test]
    async fn a_primary_that_hangs_up_on_a_ticket_fails_the_attempt_promptly() {
        // A primary of protocol 8 or older reads the ticket as a malformed XX message and
        // closes: the device's attempt fails at once (it then drops the ticket, and its next
        // connection runs the full handshake).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let old_primary = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut frame = [0u8; 2 + super::super::transport::MAX_HANDSHAKE_MSG];
            let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut frame).await;
        });
        let (device, primary) = (NodeKeys::generate(), NodeKeys::generate());
        let keys = TicketKeys::generate().unwrap();
        let r = resumption(&keys, &device, &primary);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let opts = HandshakeOptions::default();
        let attempt = timeout(LIMIT, SecureStream::resume(tcp, &device, &opts, &r)).await;
        let err = attempt.expect("no hang").unwrap_err();
        assert!(matches!(err, NetError::Authentication(_)), "{err}");
        old_primary.await.unwrap();
    }

    #[test]
    fn only_a_tagged_frame_with_a_ticket_and_a_message_is_a_resumption() {
        let mut frame = RESUME_TAG.to_vec();
        frame.push(3);
        frame.extend_from_slice(&[1, 2, 3, 9, 9]);
        assert_eq!(parse(&frame), Some((&[1u8, 2, 3][..], &[9u8, 9][..])));
        assert_eq!(
            parse(&frame[..frame.len() - 2]),
            None,
            "no message after the ticket"
        );
        assert_eq!(parse(&frame[..RESUME_TAG.len()]), None);
        assert_eq!(parse(&[0u8; 48]), None, "an XX message 1");
        assert_eq!(parse(REFUSED_TAG), None);
    }
}
