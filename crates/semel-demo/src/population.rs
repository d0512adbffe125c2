//! A deterministic synthetic Brussels population: people in households,
//! with valid national numbers, addresses (with history), taxable income and
//! unemployment benefit periods. The same seed gives the same people on
//! every machine and every Rust version (the generator is our own).

use std::collections::{HashMap, HashSet};

use semel_core::{Niss, Sex};
use time::{Date, Month};

/// A Brussels commune: NIS code, name, postal code, and a relative weight of
/// its population.
#[derive(Debug, Clone, Copy)]
pub struct Commune {
    pub nis_code: &'static str,
    pub name: &'static str,
    pub postal_code: &'static str,
    weight: u32,
}

/// The 19 communes of the Brussels-Capital Region.
pub const COMMUNES: [Commune; 19] = [
    Commune {
        nis_code: "21001",
        name: "Anderlecht",
        postal_code: "1070",
        weight: 125,
    },
    Commune {
        nis_code: "21002",
        name: "Auderghem",
        postal_code: "1160",
        weight: 34,
    },
    Commune {
        nis_code: "21003",
        name: "Berchem-Sainte-Agathe",
        postal_code: "1082",
        weight: 25,
    },
    Commune {
        nis_code: "21004",
        name: "Bruxelles",
        postal_code: "1000",
        weight: 196,
    },
    Commune {
        nis_code: "21005",
        name: "Etterbeek",
        postal_code: "1040",
        weight: 48,
    },
    Commune {
        nis_code: "21006",
        name: "Evere",
        postal_code: "1140",
        weight: 43,
    },
    Commune {
        nis_code: "21007",
        name: "Forest",
        postal_code: "1190",
        weight: 57,
    },
    Commune {
        nis_code: "21008",
        name: "Ganshoren",
        postal_code: "1083",
        weight: 25,
    },
    Commune {
        nis_code: "21009",
        name: "Ixelles",
        postal_code: "1050",
        weight: 87,
    },
    Commune {
        nis_code: "21010",
        name: "Jette",
        postal_code: "1090",
        weight: 53,
    },
    Commune {
        nis_code: "21011",
        name: "Koekelberg",
        postal_code: "1081",
        weight: 22,
    },
    Commune {
        nis_code: "21012",
        name: "Molenbeek-Saint-Jean",
        postal_code: "1080",
        weight: 98,
    },
    Commune {
        nis_code: "21013",
        name: "Saint-Gilles",
        postal_code: "1060",
        weight: 50,
    },
    Commune {
        nis_code: "21014",
        name: "Saint-Josse-ten-Noode",
        postal_code: "1210",
        weight: 27,
    },
    Commune {
        nis_code: "21015",
        name: "Schaerbeek",
        postal_code: "1030",
        weight: 133,
    },
    Commune {
        nis_code: "21016",
        name: "Uccle",
        postal_code: "1180",
        weight: 84,
    },
    Commune {
        nis_code: "21017",
        name: "Watermael-Boitsfort",
        postal_code: "1170",
        weight: 25,
    },
    Commune {
        nis_code: "21018",
        name: "Woluwe-Saint-Lambert",
        postal_code: "1200",
        weight: 57,
    },
    Commune {
        nis_code: "21019",
        name: "Woluwe-Saint-Pierre",
        postal_code: "1150",
        weight: 42,
    },
];

const STREETS: [&str; 24] = [
    "Rue de la Loi",
    "Chaussée de Gand",
    "Avenue Louise",
    "Rue Haute",
    "Chaussée de Wavre",
    "Rue Royale",
    "Boulevard Lambermont",
    "Avenue de la Couronne",
    "Rue du Midi",
    "Chaussée d'Alsemberg",
    "Rue Vanderkindere",
    "Avenue Brugmann",
    "Rue de Flandre",
    "Chaussée de Haecht",
    "Rue des Palais",
    "Avenue de Tervueren",
    "Rue Picard",
    "Boulevard Léopold II",
    "Rue Dansaert",
    "Chaussée de Mons",
    "Avenue Van Volxem",
    "Rue de Linthout",
    "Avenue Charles Woeste",
    "Rue Gallait",
];

const FAMILY_NAMES: [&str; 40] = [
    "Peeters",
    "Janssens",
    "Maes",
    "Jacobs",
    "Dubois",
    "Lambert",
    "Dupont",
    "Claes",
    "Willems",
    "Goossens",
    "Wouters",
    "De Smet",
    "Leclercq",
    "Lejeune",
    "Renard",
    "Martin",
    "El Amrani",
    "Benali",
    "El Idrissi",
    "Bouzid",
    "Yilmaz",
    "Kaya",
    "Demir",
    "Nowak",
    "Kowalski",
    "Popescu",
    "Ionescu",
    "Dimitrov",
    "Rossi",
    "Russo",
    "Garcia",
    "Fernandez",
    "Silva",
    "Santos",
    "Diallo",
    "Mukendi",
    "Ilunga",
    "Kabila",
    "Nguyen",
    "Van den Broeck",
];

const MALE_NAMES: [&str; 24] = [
    "Mohamed", "Lucas", "Adam", "Noah", "Louis", "Arthur", "Youssef", "Jules", "Ayoub", "Rayan",
    "Théo", "Mehdi", "Gabriel", "Victor", "Ibrahim", "Luca", "Mathis", "Hugo", "Pieter", "Jan",
    "Karim", "Omar", "Mateo", "Emre",
];

const FEMALE_NAMES: [&str; 24] = [
    "Sofia", "Lina", "Emma", "Louise", "Olivia", "Alice", "Nour", "Aya", "Inès", "Sara", "Mila",
    "Camille", "Fatima", "Yasmine", "Julia", "Marie", "Anna", "Léa", "Elif", "Amira", "Hanne",
    "Lotte", "Maria", "Zeynep",
];

const NATIONALITIES: [(&str, u32); 10] = [
    ("BE", 62),
    ("FR", 6),
    ("RO", 5),
    ("MA", 5),
    ("IT", 4),
    ("ES", 4),
    ("PL", 3),
    ("PT", 3),
    ("TR", 2),
    ("CD", 2),
];

/// SplitMix64: small, fast, and fully specified, so the population never
/// changes under a dependency upgrade.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn range(&mut self, lo: i64, hi_inclusive: i64) -> i64 {
        lo + self.below((hi_inclusive - lo + 1) as u64) as i64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(u64::from(total)) as u32;
        for (item, w) in items {
            if x < *w {
                return *item;
            }
            x -= w;
        }
        items[0].0
    }
}

/// An address as the National Register holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub street: String,
    pub house_number: String,
    pub postal_code: &'static str,
    pub municipality: &'static str,
    pub nis_code: &'static str,
}

/// One address with the day the person registered there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residence {
    pub address: Address,
    pub since: Date,
}

/// A person's place in their household.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relationship {
    ReferencePerson,
    Partner,
    Child,
    OtherCohabitant,
}

impl Relationship {
    pub fn code(self) -> &'static str {
        match self {
            Self::ReferencePerson => "reference_person",
            Self::Partner => "partner",
            Self::Child => "child",
            Self::OtherCohabitant => "other_cohabitant",
        }
    }
}

/// Taxable income of one income year, as assessed by SPF Finances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomeYear {
    pub income_year: i32,
    pub taxable_income_cents: i64,
    pub assessment_date: Date,
}

/// A period of unemployment benefits paid by ONEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenefitPeriod {
    pub start: Date,
    /// Last day; `None` while still running.
    pub end: Option<Date>,
    pub benefit_type: &'static str,
    pub daily_amount_cents: i64,
}

/// One synthetic person.
#[derive(Debug, Clone)]
pub struct Person {
    pub niss: Niss,
    pub family_name: &'static str,
    pub given_name: &'static str,
    pub birth_date: Date,
    pub sex: Sex,
    pub nationality: &'static str,
    pub household: usize,
    pub relationship: Relationship,
    /// Oldest first; the last one is the current main residence.
    pub residences: Vec<Residence>,
    pub income: Vec<IncomeYear>,
    pub benefits: Vec<BenefitPeriod>,
    /// BIS-number holders are not in the National Register.
    pub in_national_register: bool,
}

impl Person {
    /// The main residence on a date, if the person lived in Brussels then.
    pub fn residence_on(&self, date: Date) -> Option<&Residence> {
        self.residences.iter().rev().find(|r| r.since <= date)
    }
}

/// A household: the people who live together at one address.
#[derive(Debug, Clone)]
pub struct Household {
    pub id: String,
    pub members: Vec<usize>,
}

/// The synthetic population.
#[derive(Debug, Clone)]
pub struct Population {
    pub people: Vec<Person>,
    pub households: Vec<Household>,
    by_niss: HashMap<Niss, usize>,
}

/// The reference day the population is built around.
pub const REFERENCE_DAY: Date = match Date::from_calendar_date(2026, Month::January, 1) {
    Ok(d) => d,
    Err(_) => panic!("valid date"),
};

struct Builder {
    rng: Rng,
    used: HashSet<Niss>,
    people: Vec<Person>,
    households: Vec<Household>,
}

/// Well-known people from the primer's test vectors, placed first so demos
/// and tests can name them: (number, given name, family name).
pub const KNOWN_PEOPLE: [(&str, &str, &str); 4] = [
    ("93051822361", "Karim", "El Amrani"),
    ("85073003328", "Jan", "Peeters"),
    ("17073003384", "Adam", "El Amrani"),
    ("05110200252", "Lina", "El Amrani"),
];

impl Population {
    /// Generates at least `min_people` people in households from `seed`.
    pub fn generate(seed: u64, min_people: usize) -> Population {
        let mut b = Builder {
            rng: Rng::new(seed),
            used: HashSet::new(),
            people: Vec::with_capacity(min_people + 8),
            households: Vec::new(),
        };
        b.known_households();
        while b.people.len() < min_people {
            b.random_household();
        }
        b.bis_people();
        let by_niss = b
            .people
            .iter()
            .enumerate()
            .map(|(i, p)| (p.niss, i))
            .collect();
        Population {
            people: b.people,
            households: b.households,
            by_niss,
        }
    }

    /// The person with this number.
    pub fn person(&self, niss: &Niss) -> Option<&Person> {
        self.by_niss.get(niss).map(|&i| &self.people[i])
    }

    /// The members of a person's household, the person included.
    pub fn household_of(&self, person: &Person) -> impl Iterator<Item = &Person> {
        self.households[person.household]
            .members
            .iter()
            .map(|&i| &self.people[i])
    }
}

impl Builder {
    fn address(&mut self) -> Address {
        let weights: Vec<(usize, u32)> = COMMUNES
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.weight))
            .collect();
        let c = COMMUNES[self.rng.weighted(&weights)];
        let street = (*self.rng.pick(&STREETS)).to_owned();
        let mut house_number = self.rng.range(1, 240).to_string();
        if self.rng.chance(15) {
            house_number.push_str(&format!(" bte {}", self.rng.range(1, 12)));
        }
        Address {
            street,
            house_number,
            postal_code: c.postal_code,
            municipality: c.name,
            nis_code: c.nis_code,
        }
    }

    fn residences(&mut self, current: &Address, birth: Date) -> Vec<Residence> {
        let mut out = Vec::new();
        let moved_in = date_between(
            &mut self.rng,
            birth.max(date(2005, 1, 1)),
            date(2025, 10, 1),
        );
        if self.rng.chance(55) && moved_in > date(2008, 1, 1) {
            let earlier = self.address();
            let since = date_between(
                &mut self.rng,
                birth.max(date(1995, 1, 1)),
                moved_in.previous_day().unwrap_or(moved_in),
            );
            out.push(Residence {
                address: earlier,
                since,
            });
        }
        out.push(Residence {
            address: current.clone(),
            since: moved_in,
        });
        out
    }

    fn niss(&mut self, birth: Date, sex: Sex, bis: bool) -> Niss {
        loop {
            let mut counter = self.rng.range(1, 997) as u16;
            if (counter % 2 == 1) != (sex == Sex::Male) {
                counter += 1;
            }
            let n = if bis {
                Niss::for_bis(birth, counter, true)
            } else {
                Niss::for_birth(birth, counter)
            };
            if let Some(n) = n.filter(|n| !self.used.contains(n)) {
                self.used.insert(n);
                return n;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_person(
        &mut self,
        niss: Option<Niss>,
        given: Option<&'static str>,
        family: &'static str,
        birth: Date,
        sex: Sex,
        household: usize,
        relationship: Relationship,
        address: &Address,
    ) -> usize {
        let niss = niss.unwrap_or_else(|| self.niss(birth, sex, false));
        self.used.insert(niss);
        let given = given.unwrap_or_else(|| match sex {
            Sex::Male => *self.rng.pick(&MALE_NAMES),
            Sex::Female => *self.rng.pick(&FEMALE_NAMES),
        });
        let nationality = self.rng.weighted(&NATIONALITIES);
        let residences = self.residences(address, birth);
        let adult = age_on(birth, REFERENCE_DAY) >= 18;
        let income = if adult {
            self.income(birth)
        } else {
            Vec::new()
        };
        let benefits = if adult && self.rng.chance(14) {
            self.benefits()
        } else {
            Vec::new()
        };
        let idx = self.people.len();
        self.people.push(Person {
            niss,
            family_name: family,
            given_name: given,
            birth_date: birth,
            sex,
            nationality,
            household,
            relationship,
            residences,
            income,
            benefits,
            in_national_register: true,
        });
        self.households[household].members.push(idx);
        idx
    }

    fn income(&mut self, birth: Date) -> Vec<IncomeYear> {
        let base = match self.rng.below(10) {
            0..=1 => 0,
            2..=4 => self.rng.range(8_000, 18_000),
            5..=8 => self.rng.range(18_000, 45_000),
            _ => self.rng.range(45_000, 120_000),
        } * 100;
        (2021..=2024)
            .filter(|y| *y - birth.year() >= 18)
            .map(|year| {
                let drift = self.rng.range(-8, 8);
                IncomeYear {
                    income_year: year,
                    taxable_income_cents: (base + base * drift / 100).max(0),
                    assessment_date: date(year + 1, 9, 1 + self.rng.range(0, 27) as u8),
                }
            })
            .collect()
    }

    fn benefits(&mut self) -> Vec<BenefitPeriod> {
        let start = date_between(&mut self.rng, date(2019, 1, 1), date(2025, 9, 1));
        let ended = self.rng.chance(50);
        let end = ended.then(|| {
            let days = self.rng.range(60, 700);
            start
                .saturating_add(time::Duration::days(days))
                .min(date(2025, 12, 31))
        });
        let benefit_type = *self.rng.pick(&[
            "full_unemployment",
            "temporary_unemployment",
            "youth_allowance",
        ]);
        vec![BenefitPeriod {
            start,
            end,
            benefit_type,
            daily_amount_cents: self.rng.range(4_000, 7_500),
        }]
    }

    fn new_household(&mut self) -> usize {
        let id = format!("HH-{:06}", self.households.len() + 1);
        self.households.push(Household {
            id,
            members: Vec::new(),
        });
        self.households.len() - 1
    }

    fn known_households(&mut self) {
        let parse = |s: &str| Niss::parse(s).ok();
        // A family in Anderlecht: Karim, his partner, two children.
        let h = self.new_household();
        let addr = Address {
            street: "Rue Wayez".into(),
            house_number: "112".into(),
            postal_code: "1070",
            municipality: "Anderlecht",
            nis_code: "21001",
        };
        let (n0, g0, f0) = KNOWN_PEOPLE[0];
        self.add_person(
            parse(n0),
            Some(g0),
            f0,
            date(1993, 5, 18),
            Sex::Male,
            h,
            Relationship::ReferencePerson,
            &addr,
        );
        self.add_person(
            None,
            Some("Nour"),
            "Benali",
            date(1995, 2, 11),
            Sex::Female,
            h,
            Relationship::Partner,
            &addr,
        );
        let (n2, g2, f2) = KNOWN_PEOPLE[2];
        self.add_person(
            parse(n2),
            Some(g2),
            f2,
            date(2017, 7, 30),
            Sex::Male,
            h,
            Relationship::Child,
            &addr,
        );
        let (n3, g3, f3) = KNOWN_PEOPLE[3];
        self.add_person(
            parse(n3),
            Some(g3),
            f3,
            date(2005, 11, 2),
            Sex::Female,
            h,
            Relationship::Child,
            &addr,
        );
        // Jan lives alone in Schaerbeek.
        let h = self.new_household();
        let addr = Address {
            street: "Avenue Louis Bertrand".into(),
            house_number: "48 bte 3".into(),
            postal_code: "1030",
            municipality: "Schaerbeek",
            nis_code: "21015",
        };
        let (n1, g1, f1) = KNOWN_PEOPLE[1];
        self.add_person(
            parse(n1),
            Some(g1),
            f1,
            date(1985, 7, 30),
            Sex::Male,
            h,
            Relationship::ReferencePerson,
            &addr,
        );
    }

    fn random_household(&mut self) {
        let h = self.new_household();
        let addr = self.address();
        let family = *self.rng.pick(&FAMILY_NAMES);
        let ref_birth = date_between(&mut self.rng, date(1940, 1, 1), date(2006, 12, 31));
        let ref_sex = if self.rng.chance(50) {
            Sex::Male
        } else {
            Sex::Female
        };
        self.add_person(
            None,
            None,
            family,
            ref_birth,
            ref_sex,
            h,
            Relationship::ReferencePerson,
            &addr,
        );
        let kind = self.rng.below(10);
        if kind >= 4 {
            let partner_birth = clamp_birth(
                ref_birth.saturating_add(time::Duration::days(self.rng.range(-3000, 3000))),
            );
            let partner_sex = if self.rng.chance(90) {
                other(ref_sex)
            } else {
                ref_sex
            };
            let partner_family = if self.rng.chance(60) {
                family
            } else {
                *self.rng.pick(&FAMILY_NAMES)
            };
            self.add_person(
                None,
                None,
                partner_family,
                partner_birth,
                partner_sex,
                h,
                Relationship::Partner,
                &addr,
            );
        }
        if kind >= 3 {
            let children = self.rng.below(4);
            for _ in 0..children {
                let earliest = ref_birth
                    .replace_year(ref_birth.year() + 18)
                    .unwrap_or(ref_birth)
                    .max(date(1975, 1, 1));
                let birth = date_between(&mut self.rng, earliest, date(2025, 6, 30));
                let sex = if self.rng.chance(51) {
                    Sex::Male
                } else {
                    Sex::Female
                };
                self.add_person(
                    None,
                    None,
                    family,
                    birth,
                    sex,
                    h,
                    Relationship::Child,
                    &addr,
                );
            }
        }
        if self.rng.chance(6) {
            let birth = date_between(&mut self.rng, date(1935, 1, 1), date(2004, 12, 31));
            let sex = if self.rng.chance(50) {
                Sex::Male
            } else {
                Sex::Female
            };
            let fam = *self.rng.pick(&FAMILY_NAMES);
            self.add_person(
                None,
                None,
                fam,
                birth,
                sex,
                h,
                Relationship::OtherCohabitant,
                &addr,
            );
        }
    }

    /// A few people with BIS numbers: known to social security, not to the
    /// National Register (which answers "no data" for them).
    fn bis_people(&mut self) {
        for i in 0..20 {
            let h = self.new_household();
            let addr = self.address();
            let birth = date_between(&mut self.rng, date(1960, 1, 1), date(2004, 12, 31));
            let sex = if i % 2 == 0 { Sex::Male } else { Sex::Female };
            let niss = self.niss(birth, sex, true);
            let idx = self.add_person(
                Some(niss),
                None,
                FAMILY_NAMES[i % FAMILY_NAMES.len()],
                birth,
                sex,
                h,
                Relationship::ReferencePerson,
                &addr,
            );
            self.people[idx].in_national_register = false;
            self.people[idx].residences.clear();
        }
    }
}

fn other(s: Sex) -> Sex {
    match s {
        Sex::Male => Sex::Female,
        Sex::Female => Sex::Male,
    }
}

fn clamp_birth(d: Date) -> Date {
    d.clamp(date(1930, 1, 1), date(2006, 12, 31))
}

/// A date from its parts; the callers only pass valid literals or clamped days.
pub fn date(y: i32, m: u8, d: u8) -> Date {
    Month::try_from(m)
        .ok()
        .and_then(|m| Date::from_calendar_date(y, m, d).ok())
        .unwrap_or(REFERENCE_DAY)
}

fn date_between(rng: &mut Rng, lo: Date, hi: Date) -> Date {
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo).whole_days();
    lo.saturating_add(time::Duration::days(rng.range(0, span)))
}

/// Age in whole years on a day.
pub fn age_on(birth: Date, day: Date) -> i32 {
    let mut age = day.year() - birth.year();
    if (day.month() as u8, day.day()) < (birth.month() as u8, birth.day()) {
        age -= 1;
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_is_deterministic_valid_and_large_enough() {
        let a = Population::generate(42, 10_000);
        let b = Population::generate(42, 10_000);
        assert!(a.people.len() >= 10_000);
        assert_eq!(a.people.len(), b.people.len());
        assert!(
            a.people
                .iter()
                .zip(&b.people)
                .all(|(x, y)| x.niss == y.niss && x.given_name == y.given_name)
        );
        let unique: HashSet<_> = a.people.iter().map(|p| p.niss).collect();
        assert_eq!(unique.len(), a.people.len());
        for p in &a.people {
            // Every number re-parses, and encodes the right birth date and sex.
            let n = Niss::parse(p.niss.as_str()).expect("valid");
            assert_eq!(n.birth_date(), Some(p.birth_date));
            assert_eq!(n.sex(), Some(p.sex));
        }
        for (n, given, _) in KNOWN_PEOPLE {
            let p = a
                .person(&Niss::parse(n).expect("niss"))
                .expect("known person present");
            assert_eq!(p.given_name, given);
        }
        assert!(a.households.iter().all(|h| !h.members.is_empty()));
        assert!(a.people.iter().any(|p| !p.in_national_register));
        assert!(a.people.iter().any(|p| !p.benefits.is_empty()));
        let other_seed = Population::generate(7, 10_000);
        assert_ne!(a.people[100].niss, other_seed.people[100].niss);
    }

    #[test]
    fn residence_history_answers_by_date() {
        let pop = Population::generate(42, 2_000);
        let p = pop
            .people
            .iter()
            .find(|p| p.residences.len() == 2)
            .expect("someone moved");
        let (old, new) = (&p.residences[0], &p.residences[1]);
        assert_eq!(
            p.residence_on(new.since).map(|r| &r.address),
            Some(&new.address)
        );
        assert_eq!(
            p.residence_on(old.since).map(|r| &r.address),
            Some(&old.address)
        );
        assert!(
            p.residence_on(old.since.previous_day().expect("day"))
                .is_none()
        );
    }
}
