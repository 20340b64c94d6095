"""The query engine: one C-FIND identifier -> one SQL SELECT over the index, streamed.

:func:`compile_find` turns an identifier (a pydicom ``Dataset``), its Query/Retrieve level and the
information model into a :class:`FindQuery`: one SQLAlchemy Core ``SELECT`` with every value bound as a
parameter, the same statement on SQLite, PostgreSQL and MariaDB (only the wildcard operator is compiled
per dialect: ``LIKE ... ESCAPE '!'`` on PostgreSQL and MariaDB, ``GLOB`` on SQLite, whose ``LIKE`` ignores
case). :func:`find` runs it on a streaming cursor (server-side on PostgreSQL and MariaDB, rows fetched
``page_size`` at a time) and yields one response identifier per match, so memory does not depend on the
number of matches.

Matching (PS3.4 C.2.2.2), on the attributes the index keeps (:data:`KEYS`):

* universal: an empty value, or a value of only ``*``, matches everything (NULLs included);
* single value: exact and case-sensitive, after removing leading and trailing spaces;
* wildcard: ``*`` (any run of characters) and ``?`` (one character); every other character is literal,
  including SQL's ``%``, ``_``, ``\\`` and ``!`` (the escape character we use);
* list of UIDs: ``UID1\\UID2\\...`` matches any of them (wildcards are not allowed in UIDs);
* range, DA and TM: ``A-B``, ``A-``, ``-B``; DA also accepts the ACR-NEMA form ``YYYY.MM.DD`` and TM
  ``HH:MM:SS.frac``. A partial time is the earliest instant it names (``-12`` includes ``120000`` but
  not ``120000.000001``, like DCMTK). StudyDate and StudyTime are matched each on its own (the time
  range within each day of the date range, PS3.4 C.2.2.2.5.1), unless combined date-time matching was
  negotiated (``combined_datetime``): then both are one date-time (``20240105-20240107`` +
  ``1000-1800``: from 5 January 10:00 to 7 January 18:00);
* PN: case-insensitive, on the normalised search form (:func:`pacskit.store.index.models.normalise_person_name`:
  NFC, upper-case, trailing empty components dropped). A value without ``=`` is matched against the whole
  name and against each component group (so ``Yamada^Tarou`` and ``山田^太郎`` both find
  ``Yamada^Tarou=山田^太郎=やまだ^たろう``); with wildcards, ``*`` may span a group separator. The same
  for ReferringPhysicianName (``studies.referring_physician_name_search``).
* ModalitiesInStudy: any of the values equals the Modality of one of the study's series.

Hierarchical queries (the default) need a single value for the unique key of every level above the
Query/Retrieve level (PatientID in the Patient Root model, StudyInstanceUID, SeriesInstanceUID); relational
queries (negotiated by the peer) do not. Keys of higher levels that are not unique keys are matched too
(DCMTK's ``dcmqrscp`` ignores them; matching them is what users expect). Keys of
lower levels than the Query/Retrieve level, and keys we know nothing about, are returned empty.

Return keys: indexed keys and the counts (``NumberOf...Related...``, ModalitiesInStudy,
SOPClassesInStudy) come from the index; any other requested key is read from the stored file of one
instance of the matching entity (the instance itself at IMAGE level; the header only, never the pixel
data) and returned empty when the file does not have it. Such keys are not matched.

The parts, bottom up: :mod:`~pacskit.store.query.matching` (the rules as SQL conditions),
:mod:`~pacskit.store.query.compile` (identifier -> statement), :mod:`~pacskit.store.query.encode`
(rows -> answers), :mod:`~pacskit.store.query.execute` (statement -> rows -> answers, streamed); and
:mod:`~pacskit.store.query.retrieve`, what a C-MOVE / C-GET identifier selects. This package exports
the API the Query add-in and the worklist use.
"""

from pacskit.store.query.compile import (
    KEYS,
    PATIENT_ROOT,
    PATIENT_ROOT_FIND,
    STUDY_ROOT,
    STUDY_ROOT_FIND,
    FindQuery,
    Key,
    compile_find,
)
from pacskit.store.query.encode import answer_charset, set_answer_charset
from pacskit.store.query.execute import TooManyMatches, find, find_encoded, matching_rows
from pacskit.store.query.matching import InvalidQuery, like_pattern, parse_date, parse_time

__all__ = [
    "KEYS",
    "PATIENT_ROOT",
    "PATIENT_ROOT_FIND",
    "STUDY_ROOT",
    "STUDY_ROOT_FIND",
    "FindQuery",
    "InvalidQuery",
    "Key",
    "TooManyMatches",
    "matching_rows",
    "answer_charset",
    "compile_find",
    "find",
    "find_encoded",
    "like_pattern",
    "parse_date",
    "parse_time",
    "set_answer_charset",
]
