from partbench.cli import main

main()
