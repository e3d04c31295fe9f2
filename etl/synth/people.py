"""Synthetic identities: names, MRNs, birth dates and home towns.

Why: the extractor must drop PHI (name, MRN, address) before staging; realistic, international
identities (Japanese and European, as in DREAM's JCOG/EORTC sites) exercise that path. All invented.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

MRN_SYSTEM = "http://hospital.example.org/mrn"

# origin: (weight, male given names, female given names, family names, (city, ISO country) pairs)
_ORIGINS: dict[str, tuple] = {
    "japanese": (
        35,
        ("Hiroshi", "Takashi", "Kenji", "Makoto", "Satoshi", "Yoshio", "Kazuo", "Masahiro", "Shinji", "Tetsuya"),
        ("Yoko", "Keiko", "Naoko", "Yumiko", "Akiko", "Michiko", "Emiko", "Junko", "Sachiko", "Tomoko"),
        ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura", "Kobayashi",
         "Kato", "Yoshida", "Yamada"),
        (("Tokyo", "JP"), ("Osaka", "JP"), ("Nagoya", "JP"), ("Sapporo", "JP"), ("Fukuoka", "JP")),
    ),
    "dutch": (
        12,
        ("Jan", "Pieter", "Hendrik", "Willem", "Kees", "Bram"),
        ("Anna", "Maria", "Sanne", "Ingrid", "Marieke", "Els"),
        ("de Jong", "Jansen", "de Vries", "van den Berg", "Bakker", "Visser", "Smit", "Mulder"),
        (("Amsterdam", "NL"), ("Rotterdam", "NL"), ("Utrecht", "NL"), ("Leiden", "NL")),
    ),
    "german": (
        10,
        ("Klaus", "Jürgen", "Wolfgang", "Stefan", "Thomas", "Uwe"),
        ("Ursula", "Sabine", "Monika", "Petra", "Brigitte", "Renate"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Becker", "Wagner"),
        (("Berlin", "DE"), ("München", "DE"), ("Hamburg", "DE"), ("Köln", "DE")),
    ),
    "french": (
        10,
        ("Jean", "Pierre", "Michel", "Philippe", "Alain", "François"),
        ("Marie", "Nathalie", "Isabelle", "Sylvie", "Catherine", "Hélène"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Lefèvre"),
        (("Paris", "FR"), ("Lyon", "FR"), ("Lille", "FR"), ("Bordeaux", "FR")),
    ),
    "italian": (
        9,
        ("Giuseppe", "Marco", "Luca", "Francesco", "Antonio", "Giovanni"),
        ("Giulia", "Francesca", "Chiara", "Paola", "Rosa", "Anna"),
        ("Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo"),
        (("Milano", "IT"), ("Roma", "IT"), ("Torino", "IT"), ("Bologna", "IT")),
    ),
    "spanish": (
        8,
        ("José", "Manuel", "Javier", "Carlos", "Antonio", "Miguel"),
        ("Carmen", "Lucía", "Pilar", "Isabel", "María", "Rosario"),
        ("García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez"),
        (("Madrid", "ES"), ("Barcelona", "ES"), ("Valencia", "ES"), ("Sevilla", "ES")),
    ),
    "british": (
        8,
        ("James", "John", "David", "Richard", "Peter", "Michael"),
        ("Margaret", "Susan", "Elizabeth", "Helen", "Patricia", "Janet"),
        ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans"),
        (("London", "GB"), ("Leeds", "GB"), ("Manchester", "GB"), ("Bristol", "GB")),
    ),
    "swedish": (
        8,
        ("Lars", "Anders", "Per", "Johan", "Mats", "Nils"),
        ("Karin", "Eva", "Birgitta", "Ingrid", "Kerstin", "Lena"),
        ("Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson"),
        (("Stockholm", "SE"), ("Göteborg", "SE"), ("Uppsala", "SE"), ("Malmö", "SE")),
    ),
}
_ORIGIN_NAMES = tuple(_ORIGINS)
_ORIGIN_WEIGHTS = tuple(v[0] for v in _ORIGINS.values())


@dataclass(frozen=True)
class Person:
    mrn: str
    gender: str  # FHIR administrative-gender: "male" | "female"
    given: str
    family: str
    birth_date: date
    city: str
    country: str


def mrns(seed: int, patients: int) -> list[str]:
    """Distinct MRNs ("MRN" + 7 digits) for the whole cohort, drawn once so they never collide."""
    numbers = random.Random(f"dlm-synth:{seed}:mrn").sample(range(10**7), patients)
    return [f"MRN{n:07d}" for n in numbers]


def make_person(rng: random.Random, mrn: str, reference_date: date) -> Person:
    """A person aged 40-80 years on ``reference_date`` (the diagnosis)."""
    origin = rng.choices(_ORIGIN_NAMES, weights=_ORIGIN_WEIGHTS)[0]
    _, male, female, families, places = _ORIGINS[origin]
    gender = rng.choice(("male", "female"))
    age = rng.randint(40, 79)
    birth = reference_date - timedelta(days=int(age * 365.25) + rng.randint(0, 364))
    city, country = rng.choice(places)
    return Person(
        mrn=mrn,
        gender=gender,
        given=rng.choice(male if gender == "male" else female),
        family=rng.choice(families),
        birth_date=birth,
        city=city,
        country=country,
    )
