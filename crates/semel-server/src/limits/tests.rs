use super::*;

fn kbo() -> Kbo {
    Kbo::parse("0212345668").expect("kbo")
}

#[test]
fn with_two_brokers_each_holds_half_of_every_limit() {
    let share = Share::default();
    let settings = LimitSettings {
        consumer_rate: Some(10.0),
        consumer_burst: 10.0,
        consumer_daily_quota: Some(7),
        distinct_checks_per_citizen: 4,
        ..Default::default()
    };
    let limits = ConsumerLimits::new(&settings).shared(&share);
    share.set_brokers(2);
    let now = Instant::now();
    let admitted = (0..20).filter(|_| limits.admit(kbo(), now).is_ok()).count();
    assert_eq!(admitted, 5, "half the burst");
    // Half the rate: one token per 200 ms.
    assert!(
        limits
            .admit(kbo(), now + Duration::from_millis(150))
            .is_err()
    );
    assert!(
        limits
            .admit(kbo(), now + Duration::from_millis(250))
            .is_ok()
    );
    let today = time::macros::date!(2026 - 01 - 05);
    let quota = (0..10)
        .filter(|_| limits.take_quota(kbo(), today).is_ok())
        .count();
    assert_eq!(quota, 3, "half the daily quota, rounded down");
    assert_eq!(
        limits.take_quota(kbo(), today),
        Err(7),
        "the refusal names the organisation's quota"
    );
    // One broker again (the other died): the whole limit.
    share.set_brokers(1);
    assert_eq!(share.brokers(), 1);
    let questions = QuestionLimiter::new(&settings).shared(&share);
    share.set_brokers(5);
    assert_eq!(
        questions.per_key(),
        4,
        "the refusal names the organisation's budget"
    );
    assert_eq!(
        share.of_count(4),
        1,
        "each broker allows one question at least"
    );
}

#[test]
fn the_bucket_allows_the_burst_then_the_rate() {
    let limits = ConsumerLimits::new(&LimitSettings {
        consumer_rate: Some(2.0),
        consumer_burst: 3.0,
        ..Default::default()
    });
    let t0 = Instant::now();
    for _ in 0..3 {
        limits.admit(kbo(), t0).expect("burst");
    }
    let wait = limits.admit(kbo(), t0).expect_err("empty");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    limits
        .admit(kbo(), t0 + Duration::from_millis(500))
        .expect("refilled");
    assert!(
        limits
            .admit(Kbo::parse("0566988259").expect("kbo"), t0)
            .is_ok(),
        "buckets are per consumer"
    );
    let unlimited = ConsumerLimits::new(&LimitSettings {
        consumer_rate: None,
        ..Default::default()
    });
    assert!((0..10_000).all(|_| unlimited.admit(kbo(), t0).is_ok()));
}

#[test]
fn a_sources_publications_are_counted_by_the_change() {
    let limits = ConsumerLimits::publications(&LimitSettings {
        source_publications_per_second: 10.0,
        source_publication_burst: 20.0,
        ..Default::default()
    });
    let t0 = Instant::now();
    limits.admit_many(kbo(), 15, t0).expect("within the burst");
    let wait = limits.admit_many(kbo(), 10, t0).expect_err("five left");
    assert_eq!(wait, Duration::from_millis(500));
    limits
        .admit_many(kbo(), 10, t0 + Duration::from_millis(500))
        .expect("refilled");
}

#[test]
fn the_breaker_opens_fails_fast_then_probes() {
    let g = SourceGuard::new(&LimitSettings {
        breaker_failures: 2,
        breaker_cooldown: Duration::from_secs(5),
        ..Default::default()
    });
    let t0 = Instant::now();
    for _ in 0..2 {
        let pass = g.enter(t0).expect("closed");
        g.record(pass, false, t0);
    }
    assert!(matches!(g.enter(t0), Err(SourceRefusal::CircuitOpen(_))));
    let later = t0 + Duration::from_secs(6);
    let probe = g.enter(later).expect("one probe after the cooldown");
    assert!(
        matches!(g.enter(later), Err(SourceRefusal::CircuitOpen(_))),
        "only one probe"
    );
    g.record(probe, true, later);
    assert!(g.enter(later).is_ok(), "closed again after a good probe");
}

#[test]
fn a_source_is_not_serving_from_the_circuit_opening_until_a_call_succeeds() {
    let g = SourceGuard::new(&LimitSettings {
        breaker_failures: 1,
        breaker_cooldown: Duration::from_secs(5),
        ..Default::default()
    });
    let t0 = Instant::now();
    assert!(g.is_serving());
    let pass = g.enter(t0).expect("closed");
    g.record(pass, false, t0);
    assert!(!g.is_serving(), "open");
    // The cooldown is over, nothing has reached the source: still unknown.
    let later = t0 + Duration::from_secs(6);
    assert!(!g.is_serving(), "after the cooldown, before any probe");
    let probe = g.enter(later).expect("the probe");
    assert!(!g.is_serving(), "while the probe is in flight");
    g.record(probe, false, later);
    assert!(!g.is_serving(), "the probe failed");
    let much_later = later + Duration::from_secs(6);
    let probe = g.enter(much_later).expect("the next probe");
    g.record(probe, true, much_later);
    assert!(g.is_serving(), "a call succeeded");
}

#[test]
fn an_organisations_calls_are_capped_in_rate_and_in_flight() {
    let limits = CallLimits::new(&LimitSettings {
        calls_per_second: 2.0,
        call_burst: 3.0,
        calls_in_flight: 2,
        ..Default::default()
    });
    let t0 = Instant::now();
    let a = limits.enter(kbo(), t0).expect("first");
    let b = limits.enter(kbo(), t0).expect("second");
    assert_eq!(
        limits.enter(kbo(), t0).err(),
        Some(CallRefusal::InFlight(2)),
        "two at once at most"
    );
    drop((a, b));
    limits.enter(kbo(), t0).expect("third, a slot freed");
    assert!(
        matches!(limits.enter(kbo(), t0), Err(CallRefusal::Rate(w)) if w > Duration::ZERO),
        "the burst is spent"
    );
    let other = Kbo::parse("0566988259").expect("kbo");
    assert!(limits.enter(other, t0).is_ok(), "per organisation");
    limits
        .enter(kbo(), t0 + Duration::from_millis(500))
        .expect("refilled");
}

#[test]
fn in_flight_is_capped_without_waiting() {
    let g = SourceGuard::new(&LimitSettings {
        source_max_in_flight: 2,
        ..Default::default()
    });
    let t0 = Instant::now();
    let a = g.enter(t0).expect("first");
    let _b = g.enter(t0).expect("second");
    assert_eq!(g.enter(t0).err(), Some(SourceRefusal::Busy));
    g.record(a, true, t0);
    assert!(g.enter(t0).is_ok(), "a slot is free again");
}
