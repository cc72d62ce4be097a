//! Rate limits and quotas: their values ([`Limits`], set with `sotto server --limit
//! NAME=VALUE`) and the in-memory token buckets that enforce the rates ([`RateLimiters`]).
//!
//! Every limit is declared once, in the list below; that list makes the struct, its
//! defaults, the `--limit` parser and the table in `docs/design.md` (a test keeps the two
//! equal). Buckets are per server process: several nodes each enforce their own.

use crate::error::ApiError;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sotto_proto::{DeviceAddr, Username};
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// "N per PERIOD": a bucket of N requests, refilled evenly over PERIOD. Written `N/PERIOD`,
/// e.g. `20/1m`; PERIOD is a number with `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period, and the burst allowed.
    pub count: NonZeroU32,
    /// The period.
    pub per: Seconds,
}

impl Rate {
    const fn new(count: u32, per: u64) -> Rate {
        Rate {
            count: match NonZeroU32::new(count) {
                Some(c) => c,
                None => NonZeroU32::MIN,
            },
            per: Seconds(per),
        }
    }

    fn quota(self) -> Quota {
        let every = Duration::from_secs(self.per.0)
            .checked_div(self.count.get())
            .unwrap_or_default();
        Quota::with_period(every.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (count, per) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected N/PERIOD, e.g. 20/1m"))?;
        let count = count
            .parse::<NonZeroU32>()
            .map_err(|_| format!("{count:?}: expected a positive count"))?;
        let per: Seconds = per.parse()?;
        if per.0 == 0 {
            return Err("the period must be positive".into());
        }
        Ok(Rate { count, per })
    }
}

/// A duration in whole seconds, written with `s`, `m` or `h` (`90s`, `30m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            s if s > 0 && s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            s if s > 0 && s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected a duration such as 30s, 5m or 1h");
        let (digits, scale) = [("s", 1), ("m", 60), ("h", 3600)]
            .into_iter()
            .find_map(|(unit, scale)| s.strip_suffix(unit).map(|d| (d, scale)))
            .ok_or_else(bad)?;
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(scale).map(Seconds).ok_or_else(bad)
    }
}

/// A number of bytes, written plainly or with a binary suffix (`512M`, `2G`, `64K`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        match UNITS
            .iter()
            .find(|(n, _)| self.0 > 0 && self.0.is_multiple_of(*n))
        {
            Some((n, unit)) => write!(f, "{}{unit}", self.0.checked_div(*n).unwrap_or_default()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected a byte count such as 1048576, 64K, 512M or 2G");
        let (digits, scale) = [("K", 1u64 << 10), ("M", 1 << 20), ("G", 1 << 30)]
            .into_iter()
            .find_map(|(unit, scale)| s.strip_suffix(unit).map(|d| (d, scale)))
            .unwrap_or((s, 1));
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(scale).map(ByteSize).ok_or_else(bad)
    }
}

macro_rules! limits {
    ($( $(#[doc = $doc:literal])+ $field:ident: $ty:ty = $default:expr; )*) => {
        /// Every rate limit and quota of the server. Tests raise them only by setting fields
        /// explicitly; production sets them with `--limit NAME=VALUE`.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Limits {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $field: $default, )* }
            }
        }

        impl Limits {
            /// Every limit as `(name, value, meaning)`, values written as `--limit` takes them.
            pub fn describe(&self) -> Vec<(&'static str, String, String)> {
                vec![$(
                    (stringify!($field), self.$field.to_string(), concat!($($doc),+).trim().to_owned()),
                )*]
            }

            /// Applies one `NAME=VALUE` setting.
            pub fn set(&mut self, setting: &str) -> Result<(), String> {
                let (name, value) = setting
                    .split_once('=')
                    .ok_or_else(|| format!("{setting:?}: expected NAME=VALUE"))?;
                match name {
                    $( stringify!($field) => {
                        let parsed: $ty = value.parse().map_err(|e| format!("{name}: {e}"))?;
                        if !parsed.is_usable() {
                            return Err(format!("{name}: {value} would stop the server working"));
                        }
                        self.$field = parsed;
                    } )*
                    other => {
                        let known = [$(stringify!($field)),*].join(", ");
                        return Err(format!("unknown limit {other:?}; the limits are: {known}"));
                    }
                }
                Ok(())
            }
        }
    };
}

/// Whether a limit value lets the server work at all: a rate, count or interval of zero
/// would refuse every sign-in or socket.
trait Usable {
    fn is_usable(&self) -> bool;
}

impl Usable for Rate {
    fn is_usable(&self) -> bool {
        true
    }
}

impl Usable for Seconds {
    fn is_usable(&self) -> bool {
        self.0 > 0
    }
}

impl Usable for ByteSize {
    fn is_usable(&self) -> bool {
        self.0 > 0
    }
}

impl Usable for u32 {
    fn is_usable(&self) -> bool {
        *self > 0
    }
}

impl Usable for u64 {
    fn is_usable(&self) -> bool {
        *self > 0
    }
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;

limits! {
    /// Sign-in challenges one IP address may request.
    challenge_per_ip: Rate = Rate::new(300, MINUTE);
    /// Sign-in challenges one IP address may request for one device. Counted per address:
    /// asking needs no sign-in, so a bucket per device alone would let anyone use it up.
    challenge_per_device_and_ip: Rate = Rate::new(60, MINUTE);
    /// Accounts one IP address may register.
    register_per_ip: Rate = Rate::new(10, HOUR);
    /// KeyPackage claims one IP address may make.
    claim_per_ip: Rate = Rate::new(600, MINUTE);
    /// KeyPackage claims one device may make.
    claim_per_device: Rate = Rate::new(300, MINUTE);
    /// Claims one device may make of one user's KeyPackages.
    claim_per_pair: Rate = Rate::new(10, HOUR);
    /// One-time KeyPackages of one user handed out, to anyone; past it a claim gets the
    /// user's last-resort KeyPackage: nobody can drain an account fast, or make it unaddable.
    claim_per_target: Rate = Rate::new(10, 10 * MINUTE);
    /// Look-ups of users' keys and device lists, and of the key-transparency log, one device
    /// may make (a device list costs one, plus up to four in the log; every sync one more, of
    /// its own account).
    lookup_per_device: Rate = Rate::new(600, MINUTE);
    /// Reads of the log's checkpoints and epochs, and cosignatures sent, one IP address may
    /// make (witnesses and auditors: an auditor catching up reads one epoch per request).
    log_per_ip: Rate = Rate::new(6000, MINUTE);
    /// Messages one IP address may send.
    send_per_ip: Rate = Rate::new(6000, MINUTE);
    /// Messages one device may send.
    send_per_device: Rate = Rate::new(600, MINUTE);
    /// Acknowledgements over HTTP one device may send (on a socket they are bounded by what
    /// the socket sent).
    ack_per_device: Rate = Rate::new(600, MINUTE);
    /// WebSocket connections one IP address may open.
    websocket_per_ip: Rate = Rate::new(120, MINUTE);
    /// WebSocket connections one device may open.
    websocket_per_device: Rate = Rate::new(30, MINUTE);
    /// Connections one IP address may hold open at once (trusted proxies are exempt).
    connections_per_ip: u32 = 256;
    /// Time a client has to send a request's headers.
    header_timeout: Seconds = Seconds(30);
    /// Time a request has, from its headers to its answer (its body included).
    request_timeout: Seconds = Seconds(60);
    /// Time a write may wait on a client that reads nothing (an answer, a push).
    write_timeout: Seconds = Seconds(30);
    /// Open WebSockets per device; a new one past it closes the oldest.
    sockets_per_device: u32 = 3;
    /// Time between the server's pings on a WebSocket; one not answered by the next closes it.
    websocket_ping: Seconds = Seconds(30);
    /// Entries one device's queue may hold; past it the oldest are dropped, and counted.
    queue_messages: u64 = 20_000;
    /// Bytes one device's queue may hold; past it the oldest are dropped, and counted.
    queue_bytes: ByteSize = ByteSize(512 << 20);
    /// One-time KeyPackages one device may keep on the server.
    key_packages_per_device: u64 = 1000;
    /// Devices one account may have; linking one more is refused (`too_many_devices`).
    devices_per_account: u32 = 10;
    /// Link codes one IP address may make (a new device asking to be linked).
    link_per_ip: Rate = Rate::new(30, HOUR);
    /// Requests about link codes one IP address may make: a new device asking whether it
    /// was approved (four times a second while it waits), an approver reading an offer.
    link_poll_per_ip: Rate = Rate::new(600, MINUTE);
    /// Changes of its account's device list, and answers to link codes, one device may make.
    devices_per_device: Rate = Rate::new(30, HOUR);
}

impl Limits {
    /// The queue quota of one device.
    pub fn queue_quota(&self) -> crate::delivery::QueueQuota {
        crate::delivery::QueueQuota {
            messages: self.queue_messages,
            bytes: self.queue_bytes.0,
        }
    }
}

/// The key of a per-address bucket: an IPv4 address, or the /64 prefix of an IPv6 one (a
/// single host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpKey(IpAddr::V6(prefix.into()))
            }
            IpAddr::V6(v6) => IpKey(v6.to_ipv4_mapped().map_or(ip, IpAddr::V4)),
            v4 => IpKey(v4),
        }
    }
}

struct Bucket<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(rate: Rate) -> Self {
        Bucket {
            limiter: DefaultKeyedRateLimiter::keyed(rate.quota()),
        }
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::rate_limited(wait)
        })
    }
}

/// The token buckets of every rate in [`Limits`], keyed by IP address, device or user.
pub struct RateLimiters {
    challenge_per_ip: Bucket<IpKey>,
    challenge_per_device_and_ip: Bucket<(DeviceAddr, IpKey)>,
    register_per_ip: Bucket<IpKey>,
    claim_per_ip: Bucket<IpKey>,
    claim_per_device: Bucket<DeviceAddr>,
    claim_per_pair: Bucket<(DeviceAddr, Username)>,
    claim_per_target: Bucket<Username>,
    lookup_per_device: Bucket<DeviceAddr>,
    send_per_ip: Bucket<IpKey>,
    log_per_ip: Bucket<IpKey>,
    send_per_device: Bucket<DeviceAddr>,
    ack_per_device: Bucket<DeviceAddr>,
    websocket_per_ip: Bucket<IpKey>,
    websocket_per_device: Bucket<DeviceAddr>,
    link_per_ip: Bucket<IpKey>,
    link_poll_per_ip: Bucket<IpKey>,
    devices_per_device: Bucket<DeviceAddr>,
}

impl RateLimiters {
    /// Empty buckets for `limits`.
    pub fn new(limits: &Limits) -> Self {
        RateLimiters {
            challenge_per_ip: Bucket::new(limits.challenge_per_ip),
            challenge_per_device_and_ip: Bucket::new(limits.challenge_per_device_and_ip),
            register_per_ip: Bucket::new(limits.register_per_ip),
            claim_per_ip: Bucket::new(limits.claim_per_ip),
            claim_per_device: Bucket::new(limits.claim_per_device),
            claim_per_pair: Bucket::new(limits.claim_per_pair),
            claim_per_target: Bucket::new(limits.claim_per_target),
            lookup_per_device: Bucket::new(limits.lookup_per_device),
            send_per_ip: Bucket::new(limits.send_per_ip),
            log_per_ip: Bucket::new(limits.log_per_ip),
            send_per_device: Bucket::new(limits.send_per_device),
            ack_per_device: Bucket::new(limits.ack_per_device),
            websocket_per_ip: Bucket::new(limits.websocket_per_ip),
            websocket_per_device: Bucket::new(limits.websocket_per_device),
            link_per_ip: Bucket::new(limits.link_per_ip),
            link_poll_per_ip: Bucket::new(limits.link_poll_per_ip),
            devices_per_device: Bucket::new(limits.devices_per_device),
        }
    }

    /// A sign-in challenge requested from `ip` for `device`.
    pub fn challenge(&self, ip: IpKey, device: &DeviceAddr) -> Result<(), ApiError> {
        self.challenge_per_ip.check(&ip)?;
        self.challenge_per_device_and_ip
            .check(&(device.clone(), ip))
    }

    /// A registration from `ip`.
    pub fn register(&self, ip: IpKey) -> Result<(), ApiError> {
        self.register_per_ip.check(&ip)
    }

    /// A claim by `claimer` (from `ip`) of `target`'s KeyPackages: refused past the
    /// claimer's rates; otherwise says whether it may take one-time KeyPackages (true) or
    /// only the last-resort ones, once `target`'s one-time rate is used up.
    pub fn claim(
        &self,
        ip: IpKey,
        claimer: &DeviceAddr,
        target: &Username,
    ) -> Result<bool, ApiError> {
        self.claim_per_ip.check(&ip)?;
        self.claim_per_device.check(claimer)?;
        self.claim_per_pair
            .check(&(claimer.clone(), target.clone()))?;
        Ok(self.claim_per_target.check(target).is_ok())
    }

    /// A look-up of a user by `device`.
    pub fn lookup(&self, device: &DeviceAddr) -> Result<(), ApiError> {
        self.lookup_per_device.check(device)
    }

    /// A read of the log's checkpoints or epochs, or a cosignature, from `ip`.
    pub fn log(&self, ip: IpKey) -> Result<(), ApiError> {
        self.log_per_ip.check(&ip)
    }

    /// A message sent by `sender` from `ip`.
    pub fn send(&self, ip: IpKey, sender: &DeviceAddr) -> Result<(), ApiError> {
        self.send_per_ip.check(&ip)?;
        self.send_per_device.check(sender)
    }

    /// An acknowledgement over HTTP by `device`.
    pub fn ack(&self, device: &DeviceAddr) -> Result<(), ApiError> {
        self.ack_per_device.check(device)
    }

    /// A WebSocket opened by `device` from `ip`.
    pub fn websocket(&self, ip: IpKey, device: &DeviceAddr) -> Result<(), ApiError> {
        self.websocket_per_ip.check(&ip)?;
        self.websocket_per_device.check(device)
    }

    /// A link code made from `ip`.
    pub fn link(&self, ip: IpKey) -> Result<(), ApiError> {
        self.link_per_ip.check(&ip)
    }

    /// A request about a link code from `ip`.
    pub fn link_poll(&self, ip: IpKey) -> Result<(), ApiError> {
        self.link_poll_per_ip.check(&ip)
    }

    /// A change of `device`'s account's device list, or an answer to a link code.
    pub fn devices(&self, device: &DeviceAddr) -> Result<(), ApiError> {
        self.devices_per_device.check(device)
    }

    /// Forgets buckets that are full again, so memory follows recent traffic only.
    pub fn forget_idle(&self) {
        self.challenge_per_ip.limiter.retain_recent();
        self.challenge_per_device_and_ip.limiter.retain_recent();
        self.register_per_ip.limiter.retain_recent();
        self.claim_per_ip.limiter.retain_recent();
        self.claim_per_device.limiter.retain_recent();
        self.claim_per_pair.limiter.retain_recent();
        self.claim_per_target.limiter.retain_recent();
        self.lookup_per_device.limiter.retain_recent();
        self.send_per_ip.limiter.retain_recent();
        self.log_per_ip.limiter.retain_recent();
        self.send_per_device.limiter.retain_recent();
        self.ack_per_device.limiter.retain_recent();
        self.websocket_per_ip.limiter.retain_recent();
        self.websocket_per_device.limiter.retain_recent();
        self.link_per_ip.limiter.retain_recent();
        self.link_poll_per_ip.limiter.retain_recent();
        self.devices_per_device.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_values_parse_and_print_the_same_way() {
        let mut l = Limits::default();
        l.set("claim_per_target=5/30s").expect("a rate");
        l.set("queue_bytes=64K").expect("a size");
        l.set("queue_messages=7").expect("a count");
        l.set("websocket_ping=2m").expect("a duration");
        assert_eq!(l.claim_per_target.to_string(), "5/30s");
        assert_eq!(l.queue_bytes, ByteSize(64 << 10));
        assert_eq!(l.queue_messages, 7);
        assert_eq!(l.websocket_ping, Seconds(120));
        for (name, value, _) in Limits::default().describe() {
            let mut again = Limits::default();
            again
                .set(&format!("{name}={value}"))
                .expect("a printed value parses");
            assert_eq!(again, Limits::default(), "{name}={value}");
        }
        for bad in [
            "claim_per_target",
            "nope=1",
            "claim_per_target=0/1m",
            "claim_per_target=5/0s",
            "claim_per_target=5/1d",
            "queue_bytes=1T",
            "queue_messages=-1",
            "websocket_ping=5é",
            "websocket_ping=é",
            "queue_bytes=é",
            "sockets_per_device=0",
            "websocket_ping=0s",
        ] {
            assert!(Limits::default().set(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("an address");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("an address");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("an address");
        assert_eq!(IpKey::from(a), IpKey::from(b));
        assert_ne!(IpKey::from(a), IpKey::from(c));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("an address");
        let v4: IpAddr = "127.0.0.1".parse().expect("an address");
        assert_eq!(IpKey::from(mapped), IpKey::from(v4));
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_when_to_retry() {
        let bucket = Bucket::new(Rate::new(3, HOUR));
        let key = IpKey::from(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..3 {
            bucket.check(&key).expect("within the burst");
        }
        let refused = bucket.check(&key).expect_err("past the burst");
        // One request per 20 minutes: the wait is the refill period less the moments the
        // three requests took, whatever this machine's speed.
        let wait = refused.retry_after().expect("a Retry-After");
        assert!((1100..=1200).contains(&wait), "{wait}");
        let other = IpKey::from(IpAddr::from([127, 0, 0, 2]));
        bucket
            .check(&other)
            .expect("another key has its own bucket");
    }
}
