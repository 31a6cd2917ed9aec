from shared.main import serve

from order.bootstrap import bootstrap

if __name__ == "__main__":
    serve(bootstrap)
