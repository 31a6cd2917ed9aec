from shared.main import serve

from inventory.bootstrap import bootstrap

if __name__ == "__main__":
    serve(bootstrap)
