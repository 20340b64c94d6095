from pacskit.cli import main

main()
