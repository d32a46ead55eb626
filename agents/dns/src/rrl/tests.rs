//! The arithmetic of response rate limiting: credit, debt over the window, slips, what
//! counts as the same network and the same response, and the table's bound.

use std::net::IpAddr;

use hickory_proto::rr::{Name, RecordType};

use super::*;

fn limits(rate: u32, window: u32, slip: u32) -> RateLimits {
    RateLimits {
        responses_per_second: rate,
        nxdomains_per_second: rate,
        errors_per_second: rate,
        window,
        slip,
        ..RateLimits::DEFAULT
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn www() -> Outcome {
    Outcome::Answer(
        Name::from_ascii("www.shop.example.").unwrap(),
        RecordType::A,
    )
}

/// The verdicts of `n` responses at `at`, as `S`, `s` (slip) and `.` (drop).
fn run(rrl: &Rrl, source: &str, outcome: &Outcome, at: u64, n: usize) -> String {
    (0..n)
        .map(|_| match rrl.check(ip(source), outcome, at) {
            Verdict::Send => 'S',
            Verdict::Slip => 's',
            Verdict::Drop => '.',
        })
        .collect()
}

fn sent(verdicts: &str) -> usize {
    verdicts.chars().filter(|c| *c == 'S').count()
}

#[test]
fn a_new_source_has_one_second_of_credit_and_earns_it_back_at_the_rate() {
    let rrl = Rrl::new(limits(5, 15, 0));
    let t0 = 1_000_000u64;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t0, 8), "SSSSS...");
    // 200 ms earn one response at 5/s, but the three dropped were charged too: in debt.
    let t = t0 + 200;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t, 2), "..");
    // A second more pays the debt (4) and earns one response.
    let t = t + 1000;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t, 2), "S.");
    let t = t + 1200;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t, 6), "SSSSS.");
    // Credit never exceeds one second's worth, however long the source was quiet.
    let t = t + 10_000;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t, 7), "SSSSS..");
}

#[test]
fn a_steady_flood_gets_the_rate_through_and_no_more() {
    let rrl = Rrl::new(limits(10, 15, 0));
    let t0 = 1_000_000u64;
    // 100 queries a second for 10 seconds.
    let verdicts: String = (0..1000)
        .map(|i| run(&rrl, "192.0.2.1", &www(), t0 + i * 10, 1))
        .collect();
    let through = sent(&verdicts);
    // The debt piles up to the window's worth and stays there: only the first second's
    // credit gets through, then nothing until the flood stops.
    assert!(through <= 10 + 1, "{through} sent of 1000: {verdicts}");
    assert!(through >= 10, "the first second's credit: {through}");
}

#[test]
fn a_source_under_the_rate_is_never_limited_and_one_over_it_is_charged_for_every_query() {
    let rrl = Rrl::new(limits(10, 15, 0));
    let t0 = 1_000_000u64;
    // 9 a second for 10 seconds: all answered.
    let verdicts: String = (0..90)
        .map(|i| run(&rrl, "192.0.2.1", &www(), t0 + i * 111_112 / 1000, 1))
        .collect();
    assert_eq!(verdicts, "S".repeat(90));
    // 12 a second: every query costs one, answered or not (as in BIND), so once the credit
    // is spent the source stays in debt while it keeps asking faster than the rate.
    let verdicts: String = (0..120)
        .map(|i| run(&rrl, "192.0.3.1", &www(), t0 + i * 83_333 / 1000, 1))
        .collect();
    let through = sent(&verdicts);
    assert!((50..=60).contains(&through), "{through} of 120: {verdicts}");
    assert!(verdicts.ends_with(&".".repeat(60)), "{verdicts}");
}

#[test]
fn debt_lasts_the_window_and_a_quiet_window_starts_afresh() {
    let rrl = Rrl::new(limits(10, 2, 0));
    let t0 = 1_000_000u64;
    // 10 paid, then 90 in debt: floored at two seconds' worth (20).
    assert_eq!(sent(&run(&rrl, "192.0.2.1", &www(), t0, 100)), 10);
    // Two seconds of credit (20) pay the debt back to zero: the next is still unpaid.
    let t = t0 + 2_000;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t, 1), ".");
    // Quiet for longer than the window: afresh, whatever the debt.
    let t = t + 2001;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t, 11), "SSSSSSSSSS.");
}

#[test]
fn slip_sends_every_nth_unpaid_response_truncated() {
    let t0 = 1_000_000u64;
    for (slip, expect) in [
        (0, "SS........"),
        (1, "SSssssssss"),
        (2, "SSs.s.s.s."),
        (3, "SSs..s..s."),
    ] {
        let rrl = Rrl::new(limits(2, 15, slip));
        assert_eq!(
            run(&rrl, "192.0.2.1", &www(), t0, 10),
            expect,
            "slip {slip}"
        );
    }
    // Credit regained: the count of unpaid ones starts over, with a slip first.
    let rrl = Rrl::new(limits(2, 1, 3));
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t0, 4), "SSs.");
    let t = t0 + 1500;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t, 4), "SSs.");
}

#[test]
fn sources_in_one_network_share_an_account() {
    let rrl = Rrl::new(limits(2, 15, 0));
    let t0 = 1_000_000u64;
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t0, 1), "S");
    assert_eq!(
        run(&rrl, "192.0.2.250", &www(), t0, 2),
        "S.",
        "the same /24"
    );
    assert_eq!(
        run(&rrl, "::ffff:192.0.2.9", &www(), t0, 1),
        ".",
        "an IPv4 source seen through an IPv6 socket is itself"
    );
    assert_eq!(run(&rrl, "192.0.3.1", &www(), t0, 3), "SS.", "another /24");
    assert_eq!(run(&rrl, "2001:db8:0:1::1", &www(), t0, 2), "SS");
    assert_eq!(
        run(&rrl, "2001:db8:0:2::99", &www(), t0, 1),
        ".",
        "the same /56"
    );
    assert_eq!(
        run(&rrl, "2001:db8:0:100::1", &www(), t0, 1),
        "S",
        "another /56"
    );

    // Other lengths: each address its own (/32), everything one (/0).
    let rrl = Rrl::new(RateLimits {
        ipv4_prefix_length: 32,
        ipv6_prefix_length: 0,
        ..limits(1, 15, 0)
    });
    assert_eq!(run(&rrl, "192.0.2.1", &www(), t0, 2), "S.");
    assert_eq!(run(&rrl, "192.0.2.2", &www(), t0, 1), "S");
    assert_eq!(run(&rrl, "2001:db8::1", &www(), t0, 1), "S");
    assert_eq!(run(&rrl, "2001:db9::1", &www(), t0, 1), ".");
}

#[test]
fn responses_are_grouped_as_bind_groups_them() {
    let rrl = Rrl::new(RateLimits {
        errors_per_second: 3,
        ..limits(1, 15, 0)
    });
    let t0 = 1_000_000u64;
    let name = |s: &str| Name::from_ascii(s).unwrap();
    let from = "192.0.2.1";
    assert_eq!(run(&rrl, from, &www(), t0, 2), "S.");
    let aaaa = Outcome::Answer(name("www.shop.example."), RecordType::AAAA);
    assert_eq!(
        run(&rrl, from, &aaaa, t0, 1),
        "S",
        "another type: another response"
    );
    let mail = Outcome::Answer(name("mail.shop.example."), RecordType::A);
    assert_eq!(run(&rrl, from, &mail, t0, 1), "S", "another name");
    let upper = Outcome::Answer(name("MAIL.Shop.Example."), RecordType::A);
    assert_eq!(
        run(&rrl, from, &upper, t0, 1),
        ".",
        "names compare without case"
    );
    let nodata = Outcome::NoData(name("www.shop.example."));
    assert_eq!(run(&rrl, from, &nodata, t0, 2), "S.");
    let nxdomain = Outcome::NxDomain(name("shop.example."));
    assert_eq!(run(&rrl, from, &nxdomain, t0, 2), "S.");
    let referral = Outcome::Referral(name("child.shop.example."));
    assert_eq!(run(&rrl, from, &referral, t0, 2), "S.");
    assert_eq!(
        run(&rrl, from, &Outcome::Error, t0, 4),
        "SSS.",
        "errors have their own rate"
    );

    // A rate of 0 leaves that kind alone.
    let rrl = Rrl::new(RateLimits {
        nxdomains_per_second: 0,
        ..limits(1, 15, 0)
    });
    assert_eq!(run(&rrl, from, &nxdomain, t0, 100), "S".repeat(100));
    assert_eq!(run(&rrl, from, &www(), t0, 2), "S.");
    assert!(RateLimits::DEFAULT.enabled());
    assert!(!RateLimits::OFF.enabled());
}

#[test]
fn the_table_stays_within_its_bound_under_spoofed_sources() {
    let rrl = Rrl::new(RateLimits {
        max_entries: 1000,
        ..limits(1, 15, 0)
    });
    let t0 = 1_000_000u64;
    for i in 0..100_000u32 {
        let source = IpAddr::from(std::net::Ipv4Addr::from(i << 8));
        assert_eq!(rrl.check(source, &www(), t0), Verdict::Send);
    }
    assert!(rrl.len() <= 1000, "{} accounts", rrl.len());
    assert!(
        rrl.len() >= 400,
        "the latest generation is kept: {}",
        rrl.len()
    );
    // A network seen lately is still held (and still limited).
    let recent = IpAddr::from(std::net::Ipv4Addr::from(99_999u32 << 8));
    assert_eq!(rrl.check(recent, &www(), t0), Verdict::Drop);
}

#[test]
fn limits_out_of_range_are_named() {
    let bad = |l: RateLimits| l.check().unwrap_err();
    assert_eq!(
        bad(limits(20, 0, 2)),
        "a rate limit window of 0 s: give 1 to 3600"
    );
    assert_eq!(
        bad(limits(20, 15, 11)),
        "a rate limit slip of 11: give 0 to 10"
    );
    assert_eq!(
        bad(RateLimits {
            ipv4_prefix_length: 33,
            ..RateLimits::DEFAULT
        }),
        "an IPv4 prefix length of 33: give 0 to 32"
    );
    assert!(RateLimits::DEFAULT.check().is_ok());
}
