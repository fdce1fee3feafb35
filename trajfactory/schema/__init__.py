"""Records shared by every stage, and their Arrow schemas: `core` (sources, trajectories, quarantine, record
files), `verdicts` (verdicts and reviews), `swe` (candidates, validations, SWE tasks) and `web` (web tasks, state
predicates, screenshots).

Import records from here: `from trajfactory.schema import Task, WebTask`.
"""

from trajfactory.schema.core import *  # noqa: F401,F403
from trajfactory.schema.core import TABLE_SCHEMAS  # noqa: F401
from trajfactory.schema.verdicts import *  # noqa: F401,F403
from trajfactory.schema.swe import *  # noqa: F401,F403
from trajfactory.schema.web import *  # noqa: F401,F403
