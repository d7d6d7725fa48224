"""``jetcap serve-engine`` lives in :mod:`jetcap.serve`; these names stay importable from here (Python 3.6)."""
from jetcap.serve.app import EngineServer, serve  # noqa: F401
from jetcap.serve.endpoints import ENDPOINTS, GET_ENDPOINTS, INFERENCE_ENDPOINTS  # noqa: F401
from jetcap.serve.options import ServeOptions  # noqa: F401
from jetcap.serve.parsing import HttpError, parse_header_params, parse_multipart  # noqa: F401
