pytest_plugins = ["tests.servers", "tests.hubfixtures"]
