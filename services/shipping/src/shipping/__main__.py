from shared.service.main import serve
from shipping.bootstrap import bootstrap

if __name__ == "__main__":
    serve(bootstrap)
