//! The demo authentic sources: a National Register, SPF Finances and ONEM,
//! answering `SourceService.Fetch` from the synthetic population. They are
//! real gRPC servers behind mutual TLS and accept only the broker.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use semel_core::{Kbo, Niss, Sex, brussels_today};
use semel_demo::Population;
use semel_demo::population::{Person, Residence};
use semel_demo::seed::datasets as ds;
use time::{Date, OffsetDateTime};
use tonic::{Request, Response, Status};

use semel_server::proto::{self, FetchRequest, FetchResponse, Value, value::Kind};
use semel_server::tls::PeerIdentity;
use semel_server::{format_date, parse_date};

/// One demo source: the datasets it publishes over a shared population.
#[derive(Clone)]
pub struct DemoSource {
    population: Arc<Population>,
    datasets: BTreeSet<&'static str>,
    /// The only caller it answers: the broker's organisation.
    broker: Kbo,
}

impl DemoSource {
    pub fn national_register(population: Arc<Population>, broker: Kbo) -> Self {
        Self::new(
            population,
            broker,
            &[ds::IDENTITY, ds::RESIDENCE, ds::HOUSEHOLD],
        )
    }

    pub fn spf_finances(population: Arc<Population>, broker: Kbo) -> Self {
        Self::new(population, broker, &[ds::TAXABLE_INCOME])
    }

    pub fn onem(population: Arc<Population>, broker: Kbo) -> Self {
        Self::new(population, broker, &[ds::UNEMPLOYMENT])
    }

    fn new(population: Arc<Population>, broker: Kbo, datasets: &[&'static str]) -> Self {
        DemoSource {
            population,
            datasets: datasets.iter().copied().collect(),
            broker,
        }
    }

    pub fn into_service(self) -> proto::source_service_server::SourceServiceServer<Self> {
        proto::source_service_server::SourceServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl proto::source_service_server::SourceService for DemoSource {
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let caller = request
            .extensions()
            .get::<Arc<PeerIdentity>>()
            .and_then(|p| p.certificate.as_ref())
            .and_then(|c| c.kbo.as_ref().ok().copied());
        if caller != Some(self.broker) {
            return Err(Status::permission_denied(
                "this source answers only the broker",
            ));
        }
        let msg = request.into_inner();
        if !self.datasets.contains(msg.dataset.as_str()) {
            return Err(Status::invalid_argument(format!(
                "this source does not publish {}",
                msg.dataset
            )));
        }
        let citizen = Niss::parse(&msg.citizen)
            .map_err(|e| Status::invalid_argument(format!("citizen: {e}")))?;
        let on = if msg.reference_date.is_empty() {
            brussels_today(OffsetDateTime::now_utc())
        } else {
            parse_date("reference_date", &msg.reference_date)
                .map_err(|e| Status::invalid_argument(e.message))?
        };
        let person = self
            .population
            .person(&citizen)
            .ok_or_else(|| Status::not_found("no data about this person"))?;
        // No field: the broker asks only whether the person is known (to
        // the National Register or, for a BIS number, the BIS register).
        if msg.fields.is_empty() {
            return Ok(Response::new(FetchResponse::default()));
        }
        let all = match msg.dataset.as_str() {
            ds::IDENTITY => identity(person)?,
            ds::RESIDENCE => residence(person, on)?,
            ds::HOUSEHOLD => household(&self.population, person)?,
            ds::TAXABLE_INCOME => income(person)?,
            ds::UNEMPLOYMENT => unemployment(person, on),
            _ => return Err(Status::invalid_argument("unknown dataset")),
        };
        let wanted: BTreeSet<&str> = msg.fields.iter().map(String::as_str).collect();
        let fields = all
            .into_iter()
            .filter(|(k, _)| wanted.contains(k.as_str()))
            .collect();
        Ok(Response::new(FetchResponse { fields }))
    }
}

type Fields = HashMap<String, Value>;

fn s(v: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}
fn i(v: i64) -> Value {
    Value {
        kind: Some(Kind::IntValue(v)),
    }
}
fn b(v: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(v)),
    }
}
fn d(v: Date) -> Value {
    Value {
        kind: Some(Kind::DateValue(format_date(v))),
    }
}
fn record(fields: Vec<(&str, Value)>) -> Value {
    Value {
        kind: Some(Kind::RecordValue(proto::Record {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        })),
    }
}
fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(proto::ValueList { values })),
    }
}
fn fields(pairs: Vec<(&str, Value)>) -> Fields {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn registered(person: &Person) -> Result<(), Status> {
    if person.in_national_register {
        Ok(())
    } else {
        Err(Status::not_found("not registered in the National Register"))
    }
}

fn identity(p: &Person) -> Result<Fields, Status> {
    registered(p)?;
    Ok(fields(vec![
        ("family_name", s(p.family_name)),
        ("given_names", s(p.given_name)),
        ("birth_date", d(p.birth_date)),
        (
            "sex",
            s(match p.sex {
                Sex::Male => "M",
                Sex::Female => "F",
            }),
        ),
        ("nationality", s(p.nationality)),
    ]))
}

fn residence(p: &Person, on: Date) -> Result<Fields, Status> {
    registered(p)?;
    let Residence { address: a, since } = p
        .residence_on(on)
        .ok_or_else(|| Status::not_found("no main residence on that date"))?;
    Ok(fields(vec![
        ("street", s(a.street.clone())),
        ("house_number", s(a.house_number.clone())),
        ("postal_code", s(a.postal_code)),
        ("municipality", s(a.municipality)),
        ("nis_code", s(a.nis_code)),
        ("resident_since", d(*since)),
    ]))
}

fn household(pop: &Population, p: &Person) -> Result<Fields, Status> {
    registered(p)?;
    let members: Vec<Value> = pop
        .household_of(p)
        .map(|m| {
            record(vec![
                ("citizen", s(m.niss.as_str())),
                ("given_names", s(m.given_name)),
                ("family_name", s(m.family_name)),
                ("relationship", s(m.relationship.code())),
                ("birth_date", d(m.birth_date)),
            ])
        })
        .collect();
    Ok(fields(vec![
        ("household_id", s(pop.households[p.household].id.clone())),
        ("household_size", i(members.len() as i64)),
        ("members", list(members)),
    ]))
}

fn income(p: &Person) -> Result<Fields, Status> {
    let latest = p
        .income
        .last()
        .ok_or_else(|| Status::not_found("no tax assessment for this person"))?;
    Ok(fields(vec![
        ("latest_income_year", i(i64::from(latest.income_year))),
        (
            "latest_taxable_income_cents",
            i(latest.taxable_income_cents),
        ),
        (
            "income_years",
            list(
                p.income
                    .iter()
                    .map(|y| {
                        record(vec![
                            ("income_year", i(i64::from(y.income_year))),
                            ("taxable_income_cents", i(y.taxable_income_cents)),
                            ("assessment_date", d(y.assessment_date)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ]))
}

fn unemployment(p: &Person, on: Date) -> Fields {
    let entitled = p
        .benefits
        .iter()
        .any(|b| b.start <= on && b.end.is_none_or(|e| on <= e));
    let periods = p
        .benefits
        .iter()
        .filter(|b| b.start <= on)
        .map(|b| {
            let mut f = vec![
                ("start", d(b.start)),
                ("benefit_type", s(b.benefit_type)),
                ("daily_amount_cents", i(b.daily_amount_cents)),
            ];
            if let Some(end) = b.end {
                f.push(("end", d(end)));
            }
            record(f)
        })
        .collect();
    fields(vec![("entitled", b(entitled)), ("periods", list(periods))])
}
