"""The exceptions and the warning category of the factlens client.

``FactlensError`` is the one exception a call raises; two subclasses say what to do about the
failures a new user meets first:

- ``FactlensConnectionError`` (code UNAVAILABLE): nothing speaking gRPC at the address (connection
  refused, an HTTP/1.1 server such as factlens_server's own metrics port, a name that does not resolve);
- ``ModelNotServed`` (code NOT_FOUND): no model or an unknown model named, with the served models.

``FactlensWarning`` is issued (``warnings.warn``) for each of a response's ``warnings``: a request
the server answered but probably not as meant (e.g. a target "Paris" without its leading space).
"""
import grpc

# How a user names the server and the model: the Client's argument, the CLI's option, the environment.
SERVER_HINT = "pass --server / FACTLENS_SERVER"
MODEL_HINT = "pass model=... / --model or set FACTLENS_MODEL"


class FactlensError(Exception):
    """A failed call or a request the client refused to send.

    ``code`` is a ``grpc.StatusCode`` (the server's, or INVALID_ARGUMENT for input the client
    rejects before sending), ``message`` the explanation, which names the offending field.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class FactlensConnectionError(FactlensError):
    """No factlens_server answers gRPC at ``address`` (code UNAVAILABLE); ``reason`` says why in a word or two
    ("connection refused", "HTTP/1.1", "unknown host"), the message what to do, ``details`` gRPC's text."""

    def __init__(self, address: str, reason: str, message: str, details: str = ""):
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)
        self.address = address
        self.reason = reason
        self.details = details  # gRPC's own words


class ModelNotServed(FactlensError):
    """The request named no model while the server serves several, or a model it does not serve (code
    NOT_FOUND). ``model`` is the name asked for ("" for none), ``served`` the server's model names."""

    def __init__(self, model: str, served):
        self.model = model
        self.served = list(served)
        names = ", ".join(self.served) or "none"
        if model or len(self.served) < 2:
            message = f"model '{model}' is not served (served: {names}); {MODEL_HINT}"
        else:
            message = f"no model given and the server serves several ({names}); {MODEL_HINT}"
        super().__init__(grpc.StatusCode.NOT_FOUND, message)


class FactlensWarning(UserWarning):
    """A request the server answered, but probably not as meant; the text says what was likely meant.
    Filter it like any warning: ``warnings.simplefilter("error", FactlensWarning)`` makes it raise."""


def invalid_argument(message: str) -> FactlensError:
    """A client-side INVALID_ARGUMENT, shaped like the server's."""
    return FactlensError(grpc.StatusCode.INVALID_ARGUMENT, message)
