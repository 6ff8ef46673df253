//! The two cookies flyby sets and reads, in one place so their names, values and attributes
//! cannot drift apart: HttpOnly (no script reads them), SameSite=Lax (sent on the top-level
//! navigation of the hand-over, not on cross-site subrequests), Secure whenever the visitor
//! came over https, and a lifetime in seconds that matches what they pin.

use crate::fly::MachineId;

/// Cookie on the ephemeral app: `<machine id>.<owner secret>`.
pub const OWNER_COOKIE: &str = "flyby_owner";
/// Cookie on the launcher app while a launch runs: the id of the launcher Machine running it.
pub const LAUNCH_COOKIE: &str = "flyby_launch";

/// The value of the first cookie called `name` in a `Cookie` header (`a=1; b=2`, RFC 6265
/// section 5.4), whitespace around names and values ignored, pairs without `=` skipped. Read
/// on every request by the affinity layer: it looks for one name and allocates nothing, where
/// parsing every cookie with the `cookie` crate was a fifth of the layer's cost.
pub fn read<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// The parts of an owner cookie; the secret is unverified.
pub struct OwnerCookie<'a> {
    pub machine: MachineId,
    pub secret: &'a str,
}

impl<'a> OwnerCookie<'a> {
    /// `None` when the value is not `<machine id>.<secret>`.
    pub fn parse(value: &'a str) -> Option<Self> {
        let (id, secret) = value.split_once('.')?;
        Some(OwnerCookie {
            machine: MachineId::parse(id).ok()?,
            secret,
        })
    }
}

/// The value of an owner cookie for `machine`.
pub fn owner_cookie_value(machine: MachineId, secret: &str) -> String {
    format!("{machine}.{secret}")
}
use cookie::{Cookie, SameSite};
use std::time::Duration;

fn build(name: &'static str, value: String, max_age: Duration, secure: bool) -> String {
    let max_age = cookie::time::Duration::seconds(max_age.as_secs().min(i64::MAX as u64) as i64);
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(max_age)
        .build()
        .to_string()
}

/// The owner cookie of the ephemeral app, for as long as the Machine lives.
pub fn owner(machine: MachineId, secret: &str, lifetime: Duration, secure: bool) -> String {
    build(
        OWNER_COOKIE,
        owner_cookie_value(machine, secret),
        lifetime,
        secure,
    )
}

/// The launch pin of the launcher app, for as long as a launch may run.
pub fn launch_pin(launcher: MachineId, lifetime: Duration, secure: bool) -> String {
    build(LAUNCH_COOKIE, launcher.to_string(), lifetime, secure)
}

/// A `Set-Cookie` value that removes the cookie `name`.
pub fn clear(name: &'static str) -> String {
    build(name, String::new(), Duration::ZERO, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_cookie_is_http_only_lax_and_lives_seconds() {
        let id = MachineId::parse("0123456789abcd").unwrap();
        let c = owner(id, "s3cret", Duration::from_secs(120), false);
        assert_eq!(
            c,
            "flyby_owner=0123456789abcd.s3cret; HttpOnly; SameSite=Lax; Path=/; Max-Age=120"
        );
        let secure = owner(id, "s3cret", Duration::from_secs(120), true);
        assert!(secure.contains("; Secure"), "{secure}");
    }

    #[test]
    fn an_owner_cookie_value_is_the_id_a_dot_and_the_secret() {
        let id = MachineId::parse("0123456789abcd").unwrap();
        assert_eq!(owner_cookie_value(id, "s"), "0123456789abcd.s");
        let parsed = OwnerCookie::parse("0123456789abcd.s.t").unwrap();
        assert_eq!((parsed.machine, parsed.secret), (id, "s.t"));
        assert!(OwnerCookie::parse("nodot").is_none());
        assert!(OwnerCookie::parse("0123456789ABCD.s").is_none());
        assert_eq!(
            read(Some("a=1; flyby_owner=x.y; b=2"), OWNER_COOKIE),
            Some("x.y")
        );
        assert_eq!(read(Some("a=1"), OWNER_COOKIE), None);
        assert_eq!(read(None, OWNER_COOKIE), None);
        // What browsers and proxies send: spacing, pairs without a value, the same name
        // twice (the first counts), a name that only ends like ours.
        assert_eq!(
            read(
                Some("x_flyby_owner=no;junk; flyby_owner = v1 ;flyby_owner=v2"),
                OWNER_COOKIE
            ),
            Some("v1")
        );
        assert_eq!(read(Some(";;="), OWNER_COOKIE), None);
        assert_eq!(read(Some("flyby_owner="), OWNER_COOKIE), Some(""));
    }

    #[test]
    fn clearing_expires_at_once() {
        assert_eq!(
            clear(LAUNCH_COOKIE),
            "flyby_launch=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
    }
}
