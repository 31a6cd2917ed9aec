from order.bootstrap import bootstrap
from shared.service.main import serve

if __name__ == "__main__":
    serve(bootstrap)
